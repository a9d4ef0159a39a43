-- Cheaper writes for HL7 ingestion and FHIR $import; see BENCHMARKS.md.

-- 1. An order's FHIR ServiceRequest is a function of its merge `state` (orders::fhir::
--    service_request): it is rendered when read, not stored with every write. Storing it
--    cost each new order a second JSON document (about 1.5 kB) to parse, compress and
--    log, the larger part of an HL7 order's write. Earlier versions keep the
--    ServiceRequest they had (order_versions.payload).
ALTER TABLE orders DROP COLUMN payload;

-- 2. lz4 where 0005 meant it: changing the report payloads' type to json (0005, step 5)
--    reset their compression to the default pglz, which then spent about 5% of the
--    server's time on report rows just over the TOAST threshold.
DO $$
BEGIN
    ALTER TABLE orders ALTER COLUMN state SET COMPRESSION lz4;
    ALTER TABLE diagnostic_reports ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE diagnostic_report_versions ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available; payloads keep pglz compression';
END $$;

-- 3. Imported studies have no PACS endpoint: the endpoint index keeps only the studies
--    that have one (the only ones its queries, `pacs_endpoint_id = …`, can find).
DROP INDEX imaging_studies_endpoint;
CREATE INDEX imaging_studies_endpoint ON imaging_studies (pacs_endpoint_id) WHERE pacs_endpoint_id IS NOT NULL;
