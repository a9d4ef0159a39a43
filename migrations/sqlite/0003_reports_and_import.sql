-- SQLite twin of the PostgreSQL migration 0003 (uuid → BLOB, timestamptz → TEXT, jsonb → TEXT).

CREATE TABLE diagnostic_reports (
    id           BLOB PRIMARY KEY,
    tenant_id    BLOB NOT NULL,
    -- What makes a report the same report on a re-run: 'identifier:<system>|<value>'
    -- of its first identifier, else 'id:<id in its source system>'.
    business_key TEXT NOT NULL,
    source_id    TEXT,
    patient_id   TEXT,
    status       TEXT NOT NULL,
    effective_at TEXT,
    issued       TEXT,
    critical     BOOLEAN NOT NULL DEFAULT FALSE,
    order_id     BLOB,
    payload      TEXT NOT NULL,
    version      INTEGER NOT NULL DEFAULT 1,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    CONSTRAINT diagnostic_reports_tenant_key UNIQUE (tenant_id, business_key)
);
CREATE INDEX diagnostic_reports_tenant_created ON diagnostic_reports (tenant_id, created_at, id);
CREATE INDEX diagnostic_reports_tenant_patient ON diagnostic_reports (tenant_id, patient_id);
CREATE INDEX diagnostic_reports_tenant_effective ON diagnostic_reports (tenant_id, effective_at);

-- Superseded versions (FHIR vread); the current version is the row itself.
CREATE TABLE diagnostic_report_versions (
    tenant_id   BLOB NOT NULL,
    report_id   BLOB NOT NULL,
    version     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, report_id, version)
);

-- Token and reference search parameters of a report, one row per value:
-- identifier, category, code (system, value); based-on (value = reference);
-- imaging-study (system 'ref' with value = the referenced id, and/or study_uid).
CREATE TABLE diagnostic_report_index (
    tenant_id BLOB NOT NULL,
    report_id BLOB NOT NULL,
    param     TEXT NOT NULL,
    system    TEXT,
    value     TEXT,
    study_uid TEXT
);
CREATE INDEX diagnostic_report_index_value ON diagnostic_report_index (tenant_id, param, value);
CREATE INDEX diagnostic_report_index_uid ON diagnostic_report_index (tenant_id, study_uid);
CREATE INDEX diagnostic_report_index_report ON diagnostic_report_index (report_id);

-- The id an imported resource had in its source system, so that references written
-- against those ids (ImagingStudy/<source id>) resolve whichever resource came first.
CREATE TABLE fhir_source_ids (
    tenant_id     BLOB NOT NULL,
    resource_type TEXT NOT NULL,
    source_id     TEXT NOT NULL,
    business_key  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, source_id)
);
CREATE INDEX fhir_source_ids_key ON fhir_source_ids (tenant_id, resource_type, business_key);

CREATE TABLE import_jobs (
    id               BLOB PRIMARY KEY,
    tenant_id        BLOB NOT NULL,
    status           TEXT NOT NULL,
    origin           TEXT NOT NULL DEFAULT 'api',
    request          TEXT NOT NULL,
    requested_by     TEXT,
    transaction_time TEXT NOT NULL,
    lease_owner      TEXT,
    lease_until      TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    error            TEXT,
    started_at       TEXT,
    finished_at      TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX import_jobs_tenant_created ON import_jobs (tenant_id, created_at);
CREATE INDEX import_jobs_pending ON import_jobs (status, next_attempt_at);

-- One input file of a job and its checkpoint: the byte offset and line after the last
-- stored batch, written in the same transaction as that batch.
CREATE TABLE import_job_inputs (
    job_id        BLOB NOT NULL,
    tenant_id     BLOB NOT NULL,
    position      INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    url           TEXT NOT NULL,
    byte_offset   INTEGER NOT NULL DEFAULT 0,
    line          INTEGER NOT NULL DEFAULT 0,
    total_bytes   INTEGER,
    created       INTEGER NOT NULL DEFAULT 0,
    updated       INTEGER NOT NULL DEFAULT 0,
    unchanged     INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    done          BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (job_id, position)
);

-- One OperationOutcome per rejected line; the key makes a re-processed batch harmless.
CREATE TABLE import_errors (
    job_id    BLOB NOT NULL,
    tenant_id BLOB NOT NULL,
    position  INTEGER NOT NULL,
    line      INTEGER NOT NULL,
    outcome   TEXT NOT NULL,
    PRIMARY KEY (job_id, position, line)
);
