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

-- 4. A report's token search values (identifier, category, code, based-on) move from one
--    row each in diagnostic_report_index (a heap row and three index entries per value)
--    to the report's own `tokens`, under one GIN index, with its `meta.tag`s as `_tag`.
--    Each value gives two terms: `param|system|value` (no system: empty) and
--    `param:value` (any system), with `%`, `|` and newline escaped (%25, %7C, %0A); see
--    reports::store::search_tokens. The imaging-study references stay in
--    diagnostic_report_index.
ALTER TABLE diagnostic_reports ADD COLUMN tokens text[] COLLATE "C" NOT NULL DEFAULT '{}';
WITH raw AS (
    SELECT i.report_id, i.param, COALESCE(i.system, '') AS system, i.value
    FROM diagnostic_report_index i
    WHERE i.param <> 'imaging-study' AND i.value IS NOT NULL
    UNION ALL
    SELECT r.id, '_tag', COALESCE(t.tag->>'system', ''), t.tag->>'code'
    FROM diagnostic_reports r, jsonb_array_elements(CASE WHEN jsonb_typeof(r.payload->'meta'->'tag') = 'array'
                                                        THEN r.payload->'meta'->'tag' ELSE '[]' END) AS t(tag)
    WHERE jsonb_typeof(t.tag->'code') = 'string'
), terms AS (
    SELECT report_id, param, replace(replace(replace(system, '%', '%25'), '|', '%7C'), E'\n', '%0A') AS system,
           replace(replace(replace(value, '%', '%25'), '|', '%7C'), E'\n', '%0A') AS value
    FROM raw
), tokens AS (
    SELECT report_id, array_agg(DISTINCT term ORDER BY term) AS tokens
    FROM (SELECT report_id, param || '|' || system || '|' || value AS term FROM terms
          UNION ALL
          SELECT report_id, param || ':' || value FROM terms) t
    GROUP BY report_id
)
UPDATE diagnostic_reports r SET tokens = tokens.tokens FROM tokens WHERE r.id = tokens.report_id;
DELETE FROM diagnostic_report_index WHERE param <> 'imaging-study';
CREATE INDEX diagnostic_reports_tokens ON diagnostic_reports USING gin (tokens);

-- 5. Report payloads are stored as `json` (checked, kept as text): nothing queries into
--    them any more (tags are tokens), so the cost of building jsonb on every write and
--    of printing it on every read buys nothing.
ALTER TABLE diagnostic_reports ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE diagnostic_report_versions ALTER COLUMN payload TYPE json USING payload::json;
-- An order's merge state is only ever read back whole by the service.
ALTER TABLE orders ALTER COLUMN state TYPE json USING state::json;
