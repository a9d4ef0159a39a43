-- A report's `imaging-study` references move from one row each in
-- diagnostic_report_index to the report's own `tokens` (a JSON array of terms); see the
-- PostgreSQL migration 0007 and reports::store::study_terms. (PostgreSQL's step 2, on
-- compression, has no SQLite counterpart.)
CREATE TEMP TABLE report_study_terms AS
SELECT report_id, 'imaging-study|ref|' || replace(replace(replace(value, '%', '%25'), '|', '%7C'), char(10), '%0A') AS term
FROM diagnostic_report_index WHERE param = 'imaging-study' AND system = 'ref' AND value IS NOT NULL
UNION
SELECT report_id, 'imaging-study|uid|' || replace(replace(replace(study_uid, '%', '%25'), '|', '%7C'), char(10), '%0A')
FROM diagnostic_report_index WHERE param = 'imaging-study' AND study_uid IS NOT NULL
UNION
SELECT report_id, 'imaging-study|src|' || replace(replace(replace(value, '%', '%25'), '|', '%7C'), char(10), '%0A')
FROM diagnostic_report_index WHERE param = 'imaging-study' AND system = 'ref' AND value IS NOT NULL AND study_uid IS NULL;
UPDATE diagnostic_reports SET tokens = (
    SELECT json_group_array(term) FROM (
        SELECT value AS term FROM json_each(diagnostic_reports.tokens)
        UNION
        SELECT t.term FROM report_study_terms t WHERE t.report_id = diagnostic_reports.id
        ORDER BY 1))
WHERE id IN (SELECT report_id FROM report_study_terms);
DROP TABLE report_study_terms;
DROP TABLE diagnostic_report_index;

-- A study's meta.tag search terms go in `tags` (a JSON array; NULL for a row written
-- outside the service, whose `_tag` is then read from its payload); see the PostgreSQL
-- migration 0007, step 3. SQLite payloads are text already.
ALTER TABLE imaging_studies ADD COLUMN tags TEXT;
UPDATE imaging_studies SET tags = COALESCE((
    SELECT json_group_array(term) FROM (
        SELECT '_tag|' || replace(replace(replace(COALESCE(json_extract(t.value, '$.system'), ''), '%', '%25'), '|', '%7C'), char(10), '%0A')
               || '|' || replace(replace(replace(json_extract(t.value, '$.code'), '%', '%25'), '|', '%7C'), char(10), '%0A') AS term
        FROM json_each(imaging_studies.payload, '$.meta.tag') t WHERE json_type(t.value, '$.code') = 'text'
        UNION ALL
        SELECT '_tag:' || replace(replace(replace(json_extract(t.value, '$.code'), '%', '%25'), '|', '%7C'), char(10), '%0A')
        FROM json_each(imaging_studies.payload, '$.meta.tag') t WHERE json_type(t.value, '$.code') = 'text')), '[]');
