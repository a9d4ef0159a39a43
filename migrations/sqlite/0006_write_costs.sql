-- An order's FHIR ServiceRequest is rendered from its merge `state` when read, not
-- stored with every write; see the PostgreSQL migration 0006.(its compression settings
-- have no SQLite counterpart).
ALTER TABLE orders DROP COLUMN payload;
