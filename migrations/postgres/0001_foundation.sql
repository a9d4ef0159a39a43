-- Foundation: PACS endpoints and the imaging study index.
-- Column ORDER of both tables is a contract: the legacy migration SQL of the migration
-- plan (section 5) inserts without column lists. Columns added later go after
-- updated_at and must have defaults.

CREATE TABLE pacs_endpoints (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    node_id      text NOT NULL,
    name         text,
    qido_url     text NOT NULL,
    wado_url     text,
    stow_url     text,
    auth_mode    text,
    auth_config  jsonb,
    facility_id  uuid,
    active       boolean NOT NULL DEFAULT TRUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    timeout_ms   integer NOT NULL DEFAULT 10000,
    last_test    jsonb DEFAULT NULL
);

-- One active endpoint per PACS node of a tenant.
CREATE UNIQUE INDEX pacs_endpoints_active_node ON pacs_endpoints (tenant_id, node_id) WHERE active;
CREATE INDEX pacs_endpoints_tenant_created ON pacs_endpoints (tenant_id, created_at, id);

CREATE TABLE imaging_studies (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL,
    patient_id          text,
    encounter_id        text,
    order_id            uuid,
    accession_number    text,
    modality            text,
    started_at          timestamptz,
    status              text NOT NULL DEFAULT 'registered',
    pacs_study_uid      text NOT NULL,
    pacs_endpoint_id    uuid,
    description         text,
    number_of_series    integer,
    number_of_instances integer,
    payload             jsonb,
    version             integer NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imaging_studies_tenant_study_uid UNIQUE (tenant_id, pacs_study_uid)
);

CREATE INDEX imaging_studies_tenant_created ON imaging_studies (tenant_id, created_at, id);
CREATE INDEX imaging_studies_tenant_patient ON imaging_studies (tenant_id, patient_id);
CREATE INDEX imaging_studies_tenant_accession ON imaging_studies (tenant_id, accession_number);
CREATE INDEX imaging_studies_endpoint ON imaging_studies (pacs_endpoint_id);
