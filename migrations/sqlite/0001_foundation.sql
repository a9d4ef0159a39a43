-- Foundation: PACS endpoints and the imaging study index (SQLite twin of the
-- PostgreSQL migration; same columns in the same order). uuid → BLOB (16 bytes),
-- timestamptz → TEXT (RFC 3339, UTC), jsonb → TEXT.

CREATE TABLE pacs_endpoints (
    id           BLOB PRIMARY KEY,
    tenant_id    BLOB NOT NULL,
    node_id      TEXT NOT NULL,
    name         TEXT,
    qido_url     TEXT NOT NULL,
    wado_url     TEXT,
    stow_url     TEXT,
    auth_mode    TEXT,
    auth_config  TEXT,
    facility_id  BLOB,
    active       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    timeout_ms   INTEGER NOT NULL DEFAULT 10000,
    last_test    TEXT DEFAULT NULL
);

CREATE UNIQUE INDEX pacs_endpoints_active_node ON pacs_endpoints (tenant_id, node_id) WHERE active;
CREATE INDEX pacs_endpoints_tenant_created ON pacs_endpoints (tenant_id, created_at, id);

CREATE TABLE imaging_studies (
    id                  BLOB PRIMARY KEY,
    tenant_id           BLOB NOT NULL,
    patient_id          TEXT,
    encounter_id        TEXT,
    order_id            BLOB,
    accession_number    TEXT,
    modality            TEXT,
    started_at          TEXT,
    status              TEXT NOT NULL DEFAULT 'registered',
    pacs_study_uid      TEXT NOT NULL,
    pacs_endpoint_id    BLOB,
    description         TEXT,
    number_of_series    INTEGER,
    number_of_instances INTEGER,
    payload             TEXT,
    version             INTEGER NOT NULL DEFAULT 1,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    CONSTRAINT imaging_studies_tenant_study_uid UNIQUE (tenant_id, pacs_study_uid)
);

CREATE INDEX imaging_studies_tenant_created ON imaging_studies (tenant_id, created_at, id);
CREATE INDEX imaging_studies_tenant_patient ON imaging_studies (tenant_id, patient_id);
CREATE INDEX imaging_studies_tenant_accession ON imaging_studies (tenant_id, accession_number);
CREATE INDEX imaging_studies_endpoint ON imaging_studies (pacs_endpoint_id);
