-- Cheaper bulk writes (FHIR $import, HL7 ingestion); see BENCHMARKS.md.
--
-- 1. Identifier and key columns compare bytewise (COLLATE "C"). They are only matched
--    for equality or ordered to take row locks in a fixed order, and under the
--    database's default collation (C.UTF-8 or a language) every B-tree comparison is a
--    strcoll() call. Indexes on them are rebuilt; the column order does not change.
ALTER TABLE imaging_studies
    ALTER COLUMN pacs_study_uid TYPE text COLLATE "C",
    ALTER COLUMN patient_id TYPE text COLLATE "C",
    ALTER COLUMN accession_number TYPE text COLLATE "C";
ALTER TABLE diagnostic_reports
    ALTER COLUMN business_key TYPE text COLLATE "C",
    ALTER COLUMN patient_id TYPE text COLLATE "C";
ALTER TABLE diagnostic_report_index
    ALTER COLUMN param TYPE text COLLATE "C",
    ALTER COLUMN system TYPE text COLLATE "C",
    ALTER COLUMN value TYPE text COLLATE "C",
    ALTER COLUMN study_uid TYPE text COLLATE "C";
ALTER TABLE fhir_source_ids
    ALTER COLUMN resource_type TYPE text COLLATE "C",
    ALTER COLUMN source_id TYPE text COLLATE "C",
    ALTER COLUMN business_key TYPE text COLLATE "C";
ALTER TABLE hl7_messages
    ALTER COLUMN control_id TYPE text COLLATE "C";
ALTER TABLE orders
    ALTER COLUMN business_key TYPE text COLLATE "C",
    ALTER COLUMN accession_number TYPE text COLLATE "C",
    ALTER COLUMN study_uid TYPE text COLLATE "C",
    ALTER COLUMN patient_id TYPE text COLLATE "C",
    ALTER COLUMN filler_number TYPE text COLLATE "C";

-- 2. Only the report index rows that name a Study Instance UID go in the UID index (the
--    others, most of them, stored NULL entries there).
DROP INDEX diagnostic_report_index_uid;
CREATE INDEX diagnostic_report_index_uid ON diagnostic_report_index (tenant_id, study_uid) WHERE study_uid IS NOT NULL;

-- 3. FHIR payloads over the TOAST threshold compress with lz4, several times faster
--    than the default pglz, where the server was built with it.
DO $$
BEGIN
    ALTER TABLE imaging_studies ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE imaging_study_versions ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE diagnostic_reports ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE diagnostic_report_versions ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available; FHIR payloads keep pglz compression';
END $$;
