//! Interoperability front ends: the FHIR R4 facade (`/fhir/r4`). HL7 v2 over MLLP
//! and bulk `$import` will live here too.

pub mod fhir;
pub mod import;
