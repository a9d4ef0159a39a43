//! Radiology reports (FHIR DiagnosticReport): from bulk `$import` today, from ORU^R01
//! next. Each report links to its imaging studies (resolved when read, whichever
//! arrived first) and to the order it fulfils.

pub mod fhir;
pub mod from_fhir;
pub mod from_hl7;
pub mod routes;
pub mod store;

pub use store::{ReportRow, ReportStore, SqlReportStore};

/// DiagnosticReport.status values (FHIR R4 value set diagnostic-report-status).
pub const STATUSES: &[&str] = &[
    "registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled", "entered-in-error", "unknown",
];
