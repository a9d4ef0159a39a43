-- Every version of every imaging study (FHIR vread), and the QIDO-RS sync state of
-- each PACS endpoint, claimed by one process at a time with a row lease.

CREATE TABLE imaging_study_versions (
    tenant_id   uuid NOT NULL,
    study_id    uuid NOT NULL,
    version     integer NOT NULL,
    status      text NOT NULL,
    payload     jsonb,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, study_id, version)
);

CREATE TABLE pacs_sync_state (
    endpoint_id          uuid PRIMARY KEY,
    tenant_id            uuid NOT NULL,
    status               text NOT NULL DEFAULT 'idle',
    progress             jsonb,
    watermark            timestamptz,
    full_requested       boolean NOT NULL DEFAULT FALSE,
    next_run_at          timestamptz NOT NULL,
    interval_seconds     integer NOT NULL DEFAULT 60,
    lease_owner          text,
    lease_until          timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_error           text,
    last_run             jsonb,
    total_seen           bigint NOT NULL DEFAULT 0,
    total_created        bigint NOT NULL DEFAULT 0,
    total_updated        bigint NOT NULL DEFAULT 0,
    total_failed         bigint NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL
);

CREATE INDEX pacs_sync_state_due ON pacs_sync_state (next_run_at);
CREATE INDEX imaging_studies_tenant_started ON imaging_studies (tenant_id, started_at);
