-- Cheaper report writes (FHIR $import, ORU^R01); see BENCHMARKS.md.

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
