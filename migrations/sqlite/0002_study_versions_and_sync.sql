-- SQLite twin. Every version of every imaging study (FHIR vread), and the QIDO-RS sync state of
-- each PACS endpoint, claimed by one process at a time with a row lease.

CREATE TABLE imaging_study_versions (
    tenant_id   BLOB NOT NULL,
    study_id    BLOB NOT NULL,
    version     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    payload     TEXT,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, study_id, version)
);

CREATE TABLE pacs_sync_state (
    endpoint_id          BLOB PRIMARY KEY,
    tenant_id            BLOB NOT NULL,
    status               TEXT NOT NULL DEFAULT 'idle',
    progress             TEXT,
    watermark            TEXT,
    full_requested       BOOLEAN NOT NULL DEFAULT FALSE,
    next_run_at          TEXT NOT NULL,
    interval_seconds     INTEGER NOT NULL DEFAULT 60,
    lease_owner          TEXT,
    lease_until          TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    last_run             TEXT,
    total_seen           INTEGER NOT NULL DEFAULT 0,
    total_created        INTEGER NOT NULL DEFAULT 0,
    total_updated        INTEGER NOT NULL DEFAULT 0,
    total_failed         INTEGER NOT NULL DEFAULT 0,
    updated_at           TEXT NOT NULL
);

CREATE INDEX pacs_sync_state_due ON pacs_sync_state (next_run_at);
CREATE INDEX imaging_studies_tenant_started ON imaging_studies (tenant_id, started_at);
