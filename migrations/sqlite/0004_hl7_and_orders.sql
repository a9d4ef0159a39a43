-- SQLite twin of the PostgreSQL migration 0004 (uuid → BLOB, timestamptz → TEXT, jsonb → TEXT).
-- HL7 v2 over MLLP: connectors, the inbound message log, radiology orders
-- (FHIR ServiceRequest) from ORM^O01 / OMI^O23, the outbound outbox and round-trip runs.

-- An inbound connector is a sender, recognised by MSH-3/MSH-4 (namespace ids); an
-- outbound connector is a destination the outbox delivers to.
CREATE TABLE hl7_connectors (
    id                  BLOB PRIMARY KEY,
    tenant_id           BLOB NOT NULL,
    direction           TEXT NOT NULL,
    name                TEXT NOT NULL,
    sending_application TEXT,
    sending_facility    TEXT,
    facility_id         BLOB,
    host                TEXT,
    port                INTEGER,
    ack_timeout_ms      INTEGER,
    retry               TEXT,
    tls                 TEXT,
    events              TEXT NOT NULL DEFAULT '[]',
    active              BOOLEAN NOT NULL DEFAULT TRUE,
    -- outbound delivery: which worker holds the destination (one at a time keeps order)
    lease_owner         TEXT,
    lease_until         TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    CONSTRAINT hl7_connectors_tenant_name UNIQUE (tenant_id, name)
);
-- A sender must name one tenant: the listener routes by MSH-3/MSH-4 before it knows one.
CREATE UNIQUE INDEX hl7_connectors_sender ON hl7_connectors (sending_application, sending_facility) WHERE direction = 'inbound';

-- Every inbound message, stored before its ACK is sent. Messages no connector claims
-- (or whose MSH cannot be read) are kept under the nil tenant.
CREATE TABLE hl7_messages (
    id                  BLOB PRIMARY KEY,
    tenant_id           BLOB NOT NULL,
    connector_id        BLOB,
    peer                TEXT,
    message_type        TEXT,
    control_id          TEXT,
    version_id          TEXT,
    sending_application TEXT,
    sending_facility    TEXT,
    content_hash        TEXT NOT NULL,
    raw                 BLOB NOT NULL,
    -- processed | error | rejected | conflict
    status              TEXT NOT NULL,
    ack_code            TEXT,
    ack                 BLOB,
    error               TEXT,
    order_id            BLOB,
    report_id           BLOB,
    duplicates          INTEGER NOT NULL DEFAULT 0,
    received_at         TEXT NOT NULL,
    processed_at        TEXT NOT NULL
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
    id                     BLOB PRIMARY KEY,
    tenant_id              BLOB NOT NULL,
    business_key           TEXT NOT NULL,
    placer_number          TEXT,
    filler_number          TEXT,
    accession_number       TEXT,
    patient_id             TEXT,
    status                 TEXT NOT NULL,
    order_control          TEXT NOT NULL,
    order_status           TEXT,
    requested_procedure_id TEXT,
    procedure_code         TEXT,
    modality               TEXT,
    priority               TEXT,
    ordering_provider      TEXT,
    scheduled_at           TEXT,
    study_uid              TEXT,
    facility_id            BLOB,
    -- the order as the messages so far describe it (what the next message is applied to)
    state                  TEXT NOT NULL,
    -- the FHIR ServiceRequest of this version
    payload                TEXT NOT NULL,
    version                INTEGER NOT NULL DEFAULT 1,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL,
    CONSTRAINT orders_tenant_key UNIQUE (tenant_id, business_key)
);
CREATE INDEX orders_tenant_created ON orders (tenant_id, created_at, id);
CREATE INDEX orders_tenant_accession ON orders (tenant_id, accession_number);
CREATE INDEX orders_tenant_study_uid ON orders (tenant_id, study_uid);
CREATE INDEX orders_tenant_patient ON orders (tenant_id, patient_id);
CREATE INDEX orders_tenant_filler ON orders (tenant_id, filler_number);

CREATE TABLE order_versions (
    tenant_id   BLOB NOT NULL,
    order_id    BLOB NOT NULL,
    version     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, order_id, version)
);

-- Outbound messages, delivered in seq order per destination. The message is rendered
-- at its first attempt and kept, so a retry resends the same bytes and control id.
CREATE TABLE hl7_outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id        BLOB NOT NULL,
    connector_id     BLOB NOT NULL,
    event            TEXT NOT NULL,
    resource_type    TEXT NOT NULL,
    resource_id      BLOB NOT NULL,
    resource_version INTEGER NOT NULL,
    -- pending | acked | nak | failed
    status           TEXT NOT NULL DEFAULT 'pending',
    control_id       TEXT,
    message          BLOB,
    attempts         INTEGER NOT NULL DEFAULT 0,
    rejections       INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    ack_code         TEXT,
    ack              BLOB,
    created_at       TEXT NOT NULL,
    sent_at          TEXT,
    done_at          TEXT,
    CONSTRAINT hl7_outbox_event UNIQUE (connector_id, event, resource_id, resource_version)
);
CREATE INDEX hl7_outbox_pending ON hl7_outbox (connector_id, status, seq);
CREATE INDEX hl7_outbox_tenant ON hl7_outbox (tenant_id, connector_id, seq);

CREATE TABLE hl7_round_trips (
    id           BLOB PRIMARY KEY,
    tenant_id    BLOB NOT NULL,
    connector_id BLOB NOT NULL,
    status       TEXT NOT NULL,
    window_from  TEXT NOT NULL,
    window_to    TEXT NOT NULL,
    result       TEXT,
    requested_by TEXT,
    created_at   TEXT NOT NULL,
    finished_at  TEXT
);
CREATE INDEX hl7_round_trips_tenant ON hl7_round_trips (tenant_id, connector_id, created_at);
