//! The imaging study index (`imaging_studies`): one row per study a PACS holds, with
//! its FHIR R4 ImagingStudy in `payload`. Rows arrive by QIDO-RS sync, `$import`, or
//! the legacy `radiology_pacs` migration.

pub mod fhir;
pub mod from_fhir;
pub mod mapping;
pub mod routes;
pub mod store;
pub mod sync;

pub use store::{SqlStudyStore, StudyRow, StudyStore};

/// ImagingStudy.status values (FHIR R4 value set imagingstudy-status).
pub const STATUSES: &[&str] = &["registered", "available", "cancelled", "entered-in-error", "unknown"];
