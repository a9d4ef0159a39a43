-- Cheaper bulk writes (FHIR $import, HL7 ingestion); see BENCHMARKS.md. SQLite compares
-- text bytewise already and has no TOAST; what applies here is that only the report
-- index rows that name a Study Instance UID go in the UID index.
DROP INDEX diagnostic_report_index_uid;
CREATE INDEX diagnostic_report_index_uid ON diagnostic_report_index (tenant_id, study_uid) WHERE study_uid IS NOT NULL;
