-- Cheaper writes for FHIR $import (and ORU^R01 reports); see BENCHMARKS.md.

-- 1. A report's `imaging-study` references move from one row each in
-- diagnostic_report_index (a heap row and two or three index entries per reference,
-- written and, on update, deleted with every report) to the report's own `tokens`,
-- under its GIN index; see BENCHMARKS.md. Each reference gives `imaging-study|ref|<id>`
-- for the id it references, `imaging-study|uid|<UID>` for the Study Instance UID it
-- names, and `imaging-study|src|<id>` when it references an id and names no UID
-- (reports::store::study_terms). Links are resolved from the report's `imagingStudy`
-- references when read.
WITH terms AS (
    SELECT report_id, 'imaging-study|ref|' || replace(replace(replace(value, '%', '%25'), '|', '%7C'), E'\n', '%0A') AS term
    FROM diagnostic_report_index WHERE param = 'imaging-study' AND system = 'ref' AND value IS NOT NULL
    UNION
    SELECT report_id, 'imaging-study|uid|' || replace(replace(replace(study_uid, '%', '%25'), '|', '%7C'), E'\n', '%0A')
    FROM diagnostic_report_index WHERE param = 'imaging-study' AND study_uid IS NOT NULL
    UNION
    SELECT report_id, 'imaging-study|src|' || replace(replace(replace(value, '%', '%25'), '|', '%7C'), E'\n', '%0A')
    FROM diagnostic_report_index WHERE param = 'imaging-study' AND system = 'ref' AND value IS NOT NULL AND study_uid IS NULL
), merged AS (
    SELECT r.id, array_agg(DISTINCT t.term COLLATE "C" ORDER BY t.term COLLATE "C") AS tokens
    FROM diagnostic_reports r
    JOIN LATERAL (SELECT unnest(r.tokens) AS term UNION SELECT terms.term FROM terms WHERE terms.report_id = r.id) t ON TRUE
    WHERE r.id IN (SELECT report_id FROM terms)
    GROUP BY r.id
)
UPDATE diagnostic_reports r SET tokens = merged.tokens FROM merged WHERE r.id = merged.id;
DROP TABLE diagnostic_report_index;

-- 2. A report row (about 2.3 kB: its DiagnosticReport as sent plus its search columns) sat
-- just over the 2 kB at which PostgreSQL starts compressing a row's values one by one
-- (lz4 for the payload, then pglz for the tokens) to bring it under 2 kB; that won
-- about 15% of the bytes for about 5% of an import's CPU time (and cost a
-- decompression on every read). Rows up to a page are now stored as they are; longer
-- reports are still compressed and moved out of line.
ALTER TABLE diagnostic_reports SET (toast_tuple_target = 8160);

-- 3. Study payloads are stored as `json` (checked, kept as text), as report payloads are
--    since 0005: building jsonb from each one was about 10% of an import's CPU time. The
--    one query into them, `_tag`, reads the new `tags` instead: the study's meta.tag
--    search terms, `_tag|system|code` (no system: empty) and `_tag:code`, escaped as
--    report tokens are (interop::fhir::resource::tag_terms), derived here for the
--    studies stored before. A row written outside the service (the legacy migration's
--    SQL) has no `tags` (NULL), and its `_tag` is read from its payload.
ALTER TABLE imaging_studies ADD COLUMN tags text[] COLLATE "C";
WITH terms AS (
    SELECT s.id,
           replace(replace(replace(COALESCE(t.tag->>'system', ''), '%', '%25'), '|', '%7C'), E'\n', '%0A') AS system,
           replace(replace(replace(t.tag->>'code', '%', '%25'), '|', '%7C'), E'\n', '%0A') AS code
    FROM imaging_studies s, jsonb_array_elements(CASE WHEN jsonb_typeof(s.payload->'meta'->'tag') = 'array'
                                                     THEN s.payload->'meta'->'tag' ELSE '[]' END) AS t(tag)
    WHERE jsonb_typeof(t.tag->'code') = 'string'
), tags AS (
    SELECT id, array_agg(term) AS tags
    FROM (SELECT id, '_tag|' || system || '|' || code AS term FROM terms
          UNION ALL
          SELECT id, '_tag:' || code FROM terms) t
    GROUP BY id
)
UPDATE imaging_studies s SET tags = COALESCE(tags.tags, '{}')
FROM imaging_studies s2 LEFT JOIN tags ON tags.id = s2.id
WHERE s2.id = s.id;
ALTER TABLE imaging_studies ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE imaging_study_versions ALTER COLUMN payload TYPE json USING payload::json;
-- A change of type resets a column's compression (see 0006): lz4 again.
DO $$
BEGIN
    ALTER TABLE imaging_studies ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE imaging_study_versions ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available; study payloads keep pglz compression';
END $$;
