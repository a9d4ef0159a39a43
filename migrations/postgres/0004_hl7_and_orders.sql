-- HL7 v2 over MLLP: connectors, the inbound message log, radiology orders
-- (FHIR ServiceRequest) from ORM^O01 / OMI^O23, the outbound outbox and round-trip runs.

-- An inbound connector is a sender, recognised by MSH-3/MSH-4 (namespace ids); an
-- outbound connector is a destination the outbox delivers to.
CREATE TABLE hl7_connectors (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL,
    direction           text NOT NULL,
    name                text NOT NULL,
    sending_application text,
    sending_facility    text,
    facility_id         uuid,
    host                text,
    port                integer,
    ack_timeout_ms      integer,
    retry               jsonb,
    tls                 jsonb,
    events              jsonb NOT NULL DEFAULT '[]',
    active              boolean NOT NULL DEFAULT TRUE,
    -- outbound delivery: which worker holds the destination (one at a time keeps order)
    lease_owner         text,
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT hl7_connectors_tenant_name UNIQUE (tenant_id, name)
);
-- A sender must name one tenant: the listener routes by MSH-3/MSH-4 before it knows one.
CREATE UNIQUE INDEX hl7_connectors_sender ON hl7_connectors (sending_application, sending_facility) WHERE direction = 'inbound';

-- Every inbound message, stored before its ACK is sent. Messages no connector claims
-- (or whose MSH cannot be read) are kept under the nil tenant.
CREATE TABLE hl7_messages (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL,
    connector_id        uuid,
    peer                text,
    message_type        text,
    control_id          text,
    version_id          text,
    sending_application text,
    sending_facility    text,
    content_hash        text NOT NULL,
    raw                 bytea NOT NULL,
    -- processed | error | rejected | conflict
    status              text NOT NULL,
    ack_code            text,
    ack                 bytea,
    error               text,
    order_id            uuid,
    report_id           uuid,
    duplicates          integer NOT NULL DEFAULT 0,
    received_at         timestamptz NOT NULL,
    processed_at        timestamptz NOT NULL
);
CREATE INDEX hl7_messages_tenant_received ON hl7_messages (tenant_id, received_at, id);
CREATE INDEX hl7_messages_control ON hl7_messages (tenant_id, connector_id, control_id);
-- A sender's control id names one message (kept apart: messages flagged as a conflict,
-- a reused control id with other content). A batch whose insert meets a stored one is
-- rolled back and checked message by message for duplicates.
CREATE UNIQUE INDEX hl7_messages_control_once ON hl7_messages (tenant_id, connector_id, control_id) WHERE status <> 'conflict';

-- Radiology orders. The business key is the placer order number (ORC-2) with its
-- namespace, else the filler order number (ORC-3).
CREATE TABLE orders (
    id                     uuid PRIMARY KEY,
    tenant_id              uuid NOT NULL,
    business_key           text NOT NULL,
    placer_number          text,
    filler_number          text,
    accession_number       text,
    patient_id             text,
    status                 text NOT NULL,
    order_control          text NOT NULL,
    order_status           text,
    requested_procedure_id text,
    procedure_code         text,
    modality               text,
    priority               text,
    ordering_provider      text,
    scheduled_at           timestamptz,
    study_uid              text,
    facility_id            uuid,
    -- the order as the messages so far describe it (what the next message is applied to)
    state                  jsonb NOT NULL,
    -- the FHIR ServiceRequest of this version
    payload                jsonb NOT NULL,
    version                integer NOT NULL DEFAULT 1,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    CONSTRAINT orders_tenant_key UNIQUE (tenant_id, business_key)
);
CREATE INDEX orders_tenant_created ON orders (tenant_id, created_at, id);
CREATE INDEX orders_tenant_accession ON orders (tenant_id, accession_number);
CREATE INDEX orders_tenant_study_uid ON orders (tenant_id, study_uid);
CREATE INDEX orders_tenant_patient ON orders (tenant_id, patient_id);
CREATE INDEX orders_tenant_filler ON orders (tenant_id, filler_number);

CREATE TABLE order_versions (
    tenant_id   uuid NOT NULL,
    order_id    uuid NOT NULL,
    version     integer NOT NULL,
    status      text NOT NULL,
    payload     jsonb NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, order_id, version)
);

-- Outbound messages, delivered in seq order per destination. The message is rendered
-- at its first attempt and kept, so a retry resends the same bytes and control id.
CREATE TABLE hl7_outbox (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    connector_id     uuid NOT NULL,
    event            text NOT NULL,
    resource_type    text NOT NULL,
    resource_id      uuid NOT NULL,
    resource_version integer NOT NULL,
    -- pending | acked | nak | failed
    status           text NOT NULL DEFAULT 'pending',
    control_id       text,
    message          bytea,
    attempts         integer NOT NULL DEFAULT 0,
    rejections       integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    ack_code         text,
    ack              bytea,
    created_at       timestamptz NOT NULL,
    sent_at          timestamptz,
    done_at          timestamptz,
    CONSTRAINT hl7_outbox_event UNIQUE (connector_id, event, resource_id, resource_version)
);
CREATE INDEX hl7_outbox_pending ON hl7_outbox (connector_id, status, seq);
CREATE INDEX hl7_outbox_tenant ON hl7_outbox (tenant_id, connector_id, seq);

CREATE TABLE hl7_round_trips (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    connector_id uuid NOT NULL,
    status       text NOT NULL,
    window_from  timestamptz NOT NULL,
    window_to    timestamptz NOT NULL,
    result       jsonb,
    requested_by text,
    created_at   timestamptz NOT NULL,
    finished_at  timestamptz
);
CREATE INDEX hl7_round_trips_tenant ON hl7_round_trips (tenant_id, connector_id, created_at);
