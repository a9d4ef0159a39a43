//! HL7 v2 over MLLP: framing ([`mllp`]), messages with their separators, escapes and
//! character sets ([`message`]), and acknowledgements ([`ack`]).
//!
//! These are the protocol pieces the RIS connectors build on (the listener, the message
//! log, orders from ORM/OMI, reports from ORU and the outbound outbox come next).

pub mod ack;
pub mod message;
pub mod mllp;
