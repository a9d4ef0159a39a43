//! Interoperability front ends: the FHIR R4 facade (`/fhir/r4`) with bulk `$import`,
//! and the HL7 v2 protocol pieces (MLLP framing, messages, ACKs) the RIS connectors use.

pub mod fhir;
pub mod hl7;
pub mod import;
