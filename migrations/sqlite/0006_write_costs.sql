-- An order's FHIR ServiceRequest is rendered from its merge `state` when read, not
-- stored with every write; see the PostgreSQL migration 0006.(its compression settings
-- have no SQLite counterpart).
ALTER TABLE orders DROP COLUMN payload;

-- Imported studies have no PACS endpoint: the endpoint index keeps only those that have one.
DROP INDEX imaging_studies_endpoint;
CREATE INDEX imaging_studies_endpoint ON imaging_studies (pacs_endpoint_id) WHERE pacs_endpoint_id IS NOT NULL;
