-- Radiology reports (FHIR DiagnosticReport) and FHIR bulk $import jobs.

CREATE TABLE diagnostic_reports (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    -- What makes a report the same report on a re-run: 'identifier:<system>|<value>'
    -- of its first identifier, else 'id:<id in its source system>'.
    business_key text NOT NULL,
    source_id    text,
    patient_id   text,
    status       text NOT NULL,
    effective_at timestamptz,
    issued       timestamptz,
    critical     boolean NOT NULL DEFAULT FALSE,
    order_id     uuid,
    payload      jsonb NOT NULL,
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    CONSTRAINT diagnostic_reports_tenant_key UNIQUE (tenant_id, business_key)
);
CREATE INDEX diagnostic_reports_tenant_created ON diagnostic_reports (tenant_id, created_at, id);
CREATE INDEX diagnostic_reports_tenant_patient ON diagnostic_reports (tenant_id, patient_id);
CREATE INDEX diagnostic_reports_tenant_effective ON diagnostic_reports (tenant_id, effective_at);

-- Superseded versions (FHIR vread); the current version is the row itself.
CREATE TABLE diagnostic_report_versions (
    tenant_id   uuid NOT NULL,
    report_id   uuid NOT NULL,
    version     integer NOT NULL,
    status      text NOT NULL,
    payload     jsonb NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, report_id, version)
);

-- Token and reference search parameters of a report, one row per value:
-- identifier, category, code (system, value); based-on (value = reference);
-- imaging-study (system 'ref' with value = the referenced id, and/or study_uid).
CREATE TABLE diagnostic_report_index (
    tenant_id uuid NOT NULL,
    report_id uuid NOT NULL,
    param     text NOT NULL,
    system    text,
    value     text,
    study_uid text
);
CREATE INDEX diagnostic_report_index_value ON diagnostic_report_index (tenant_id, param, value);
CREATE INDEX diagnostic_report_index_uid ON diagnostic_report_index (tenant_id, study_uid);
CREATE INDEX diagnostic_report_index_report ON diagnostic_report_index (report_id);

-- The id an imported resource had in its source system, so that references written
-- against those ids (ImagingStudy/<source id>) resolve whichever resource came first.
CREATE TABLE fhir_source_ids (
    tenant_id     uuid NOT NULL,
    resource_type text NOT NULL,
    source_id     text NOT NULL,
    business_key  text NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, source_id)
);
CREATE INDEX fhir_source_ids_key ON fhir_source_ids (tenant_id, resource_type, business_key);

CREATE TABLE import_jobs (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    status           text NOT NULL,
    origin           text NOT NULL DEFAULT 'api',
    request          jsonb NOT NULL,
    requested_by     text,
    transaction_time timestamptz NOT NULL,
    lease_owner      text,
    lease_until      timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    error            text,
    started_at       timestamptz,
    finished_at      timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX import_jobs_tenant_created ON import_jobs (tenant_id, created_at);
CREATE INDEX import_jobs_pending ON import_jobs (status, next_attempt_at);

-- One input file of a job and its checkpoint: the byte offset and line after the last
-- stored batch, written in the same transaction as that batch.
CREATE TABLE import_job_inputs (
    job_id        uuid NOT NULL,
    tenant_id     uuid NOT NULL,
    position      integer NOT NULL,
    resource_type text NOT NULL,
    url           text NOT NULL,
    byte_offset   bigint NOT NULL DEFAULT 0,
    line          bigint NOT NULL DEFAULT 0,
    total_bytes   bigint,
    created       bigint NOT NULL DEFAULT 0,
    updated       bigint NOT NULL DEFAULT 0,
    unchanged     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    done          boolean NOT NULL DEFAULT FALSE,
    PRIMARY KEY (job_id, position)
);

-- One OperationOutcome per rejected line; the key makes a re-processed batch harmless.
CREATE TABLE import_errors (
    job_id    uuid NOT NULL,
    tenant_id uuid NOT NULL,
    position  integer NOT NULL,
    line      bigint NOT NULL,
    outcome   jsonb NOT NULL,
    PRIMARY KEY (job_id, position, line)
);
