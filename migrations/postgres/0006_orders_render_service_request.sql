-- An order's FHIR ServiceRequest is a function of its merge `state` (orders::fhir::
-- service_request): it is rendered when read, not stored with every write. Storing it
-- cost each new order a second JSON document (about 1.5 kB) to parse, compress and log,
-- the larger part of an HL7 order's write; see BENCHMARKS.md. Earlier versions keep
-- the ServiceRequest they had (order_versions.payload).
ALTER TABLE orders DROP COLUMN payload;

DO $$
BEGIN
    ALTER TABLE orders ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available; order states keep pglz compression';
END $$;
