//! The API test suite: one binary, the real server on port 0, real peers.
//! `RADIOLOGY_TEST_BACKEND=sqlite|postgres` picks the store; scripts/test runs both.

mod connectivity;
mod faults;
mod fhir;
mod helpers;
mod hl7;
mod import;
mod legacy_migration;
mod ops;
mod pacs_endpoints;
mod secrets;
mod security;
mod store_conformance;
mod sync;
