-- Cheaper bulk writes (FHIR $import, HL7 ingestion); see BENCHMARKS.md. SQLite compares
-- text bytewise already and has no TOAST; what applies here is that only the report
-- index rows that name a Study Instance UID go in the UID index.
DROP INDEX diagnostic_report_index_uid;
CREATE INDEX diagnostic_report_index_uid ON diagnostic_report_index (tenant_id, study_uid) WHERE study_uid IS NOT NULL;

-- A report's token search values (identifier, category, code, based-on) move from one
-- row each in diagnostic_report_index to the report's own `tokens` (a JSON array of
-- terms), with its meta.tags as `_tag`; see the PostgreSQL migration 0005 and
-- reports::store::search_tokens.
ALTER TABLE diagnostic_reports ADD COLUMN tokens text NOT NULL DEFAULT '[]';
CREATE TEMP TABLE report_terms AS
WITH raw AS (
    SELECT i.report_id AS report_id, i.param AS param, COALESCE(i.system, '') AS system, i.value AS value
    FROM diagnostic_report_index i
    WHERE i.param <> 'imaging-study' AND i.value IS NOT NULL
    UNION ALL
    SELECT r.id, '_tag', COALESCE(json_extract(t.value, '$.system'), ''), json_extract(t.value, '$.code')
    FROM diagnostic_reports r, json_each(r.payload, '$.meta.tag') t
    WHERE json_type(t.value, '$.code') = 'text'
), terms AS (
    SELECT report_id, param, replace(replace(replace(system, '%', '%25'), '|', '%7C'), char(10), '%0A') AS system,
           replace(replace(replace(value, '%', '%25'), '|', '%7C'), char(10), '%0A') AS value
    FROM raw
)
SELECT report_id, param || '|' || system || '|' || value AS term FROM terms
UNION ALL
SELECT report_id, param || ':' || value FROM terms;
UPDATE diagnostic_reports SET tokens = COALESCE(
    (SELECT json_group_array(DISTINCT t.term) FROM report_terms t WHERE t.report_id = diagnostic_reports.id), '[]');
DROP TABLE report_terms;
DELETE FROM diagnostic_report_index WHERE param <> 'imaging-study';
