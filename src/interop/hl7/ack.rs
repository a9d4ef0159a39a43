//! Acknowledgements: original-mode ACK with MSA-1 AA/AE/AR, MSA-2 = the MSH-10 answered,
//! and an ERR segment naming the offending field (HL7 table 0357 error codes), in the
//! ERR layout of the message's version (ELD in ERR-1 before v2.5; ERR-2/3/4 from v2.5).

use super::message::{Message, Separators};

/// MSA-1: accept, error (the message was bad), reject (we cannot take it at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    AA,
    AE,
    AR,
    /// Enhanced mode (MSH-15): commit accept, error, reject.
    CA,
    CE,
    CR,
}

impl AckCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// The enhanced-mode (commit) code of the same meaning.
    pub fn commit(self) -> Self {
        match self {
            AckCode::AA | AckCode::CA => AckCode::CA,
            AckCode::AE | AckCode::CE => AckCode::CE,
            AckCode::AR | AckCode::CR => AckCode::CR,
        }
    }
}

/// What went wrong, for the ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// Segment ID, sequence (1-based occurrence), field, component (0 = none).
    pub segment: String,
    pub sequence: usize,
    pub field: usize,
    pub component: usize,
    /// HL7 table 0357: 100 segment sequence error, 101 required field missing, 102 data
    /// type error, 103 table value not found, 200 unsupported message type, 201
    /// unsupported event code, 203 unsupported version id, 204 unknown key identifier,
    /// 205 duplicate key identifier, 207 application internal error.
    pub code: u16,
    pub text: String,
}

fn code_text(code: u16) -> &'static str {
    match code {
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        _ => "Application internal error",
    }
}

/// Builds the ACK of `original` (which may be only partly readable: what is missing
/// from its MSH is left empty). `now` is the HL7 timestamp (YYYYMMDDHHMMSS), `control_id`
/// the ACK's own MSH-10.
pub fn build(original: Option<&Message>, code: AckCode, error: Option<&AckError>, now: &str, control_id: &str) -> String {
    let s = original.map(|m| m.separators).unwrap_or_default();
    let get = |f: usize, c: usize| original.and_then(|m| m.value("MSH", f, c)).map(|v| s.escape(&v)).unwrap_or_default();
    let version = get(12, 1);
    let version = if version.is_empty() { "2.5.1".to_string() } else { version };
    let event = get(9, 2);
    let f = s.field;
    let mut out = format!(
        "MSH{f}{enc}{f}{recv_app}{f}{recv_fac}{f}{send_app}{f}{send_fac}{f}{now}{f}{f}ACK{c}{event}{c}ACK{f}{control_id}{f}{proc}{f}{version}\r",
        enc = s.encoding_characters(),
        recv_app = get(5, 1),
        recv_fac = get(6, 1),
        send_app = get(3, 1),
        send_fac = get(4, 1),
        c = s.component,
        proc = { let p = get(11, 1); if p.is_empty() { "P".to_string() } else { p } },
    );
    let text = error.map(|e| s.escape(&e.text)).unwrap_or_default();
    out.push_str(&format!("MSA{f}{}{f}{}{f}{text}\r", code.as_str(), get(10, 1)));
    if let Some(e) = error {
        out.push_str(&err_segment(&s, &version, e));
    }
    out
}

fn err_segment(s: &Separators, version: &str, e: &AckError) -> String {
    let (f, c, sc) = (s.field, s.component, s.subcomponent);
    let comp = if e.component > 0 { e.component.to_string() } else { String::new() };
    let code = format!("{}{c}{}{c}HL70357", e.code, code_text(e.code));
    let modern = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).is_some_and(|minor| minor >= 5);
    if modern {
        // ERR-2 location (ERL), ERR-3 code (CWE), ERR-4 severity, ERR-8 user message
        format!("ERR{f}{f}{}{c}{}{c}{}{c}{c}{comp}{f}{code}{f}E{f}{f}{f}{f}{}\r", e.segment, e.sequence, e.field, s.escape(&e.text))
    } else {
        // ERR-1 error code and location (ELD): segment^sequence^field^code&text&table
        let code = format!("{}{sc}{}{sc}HL70357", e.code, code_text(e.code));
        format!("ERR{f}{}{c}{}{c}{}{c}{code}\r", e.segment, e.sequence, e.field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orm(version: &str) -> Message {
        Message::parse(format!("MSH|^~\\&|RIS|GEN|RAD|PLAT|20240105||ORM^O01|CTRL-9|P|{version}\rPID|1||P1\r").as_bytes()).unwrap()
    }

    #[test]
    fn ack_answers_msh_10_and_swaps_sender_and_receiver() {
        let ack = build(Some(&orm("2.5.1")), AckCode::AA, None, "20240105101501", "ACK-1");
        let m = Message::parse(ack.as_bytes()).unwrap();
        assert_eq!(m.value("MSH", 3, 1).as_deref(), Some("RAD"));
        assert_eq!(m.value("MSH", 5, 1).as_deref(), Some("RIS"));
        assert_eq!(m.value("MSH", 9, 1).as_deref(), Some("ACK"));
        assert_eq!(m.value("MSH", 9, 2).as_deref(), Some("O01"));
        assert_eq!(m.value("MSA", 1, 1).as_deref(), Some("AA"));
        assert_eq!(m.value("MSA", 2, 1).as_deref(), Some("CTRL-9"));
        assert!(m.segments("ERR").next().is_none());
    }

    #[test]
    fn err_names_the_field_in_the_layout_of_the_version() {
        let e = AckError { segment: "OBR".into(), sequence: 1, field: 18, component: 0, code: 101, text: "OBR-18 (accession) is required | missing".into() };
        let m = Message::parse(build(Some(&orm("2.5.1")), AckCode::AE, Some(&e), "20240105", "A2").as_bytes()).unwrap();
        assert_eq!(m.value("MSA", 1, 1).as_deref(), Some("AE"));
        assert_eq!(m.value("ERR", 2, 1).as_deref(), Some("OBR"));
        assert_eq!(m.value("ERR", 2, 3).as_deref(), Some("18"));
        assert_eq!(m.value("ERR", 3, 1).as_deref(), Some("101"));
        assert_eq!(m.value("ERR", 4, 1).as_deref(), Some("E"));
        assert_eq!(m.value("ERR", 8, 1).as_deref(), Some("OBR-18 (accession) is required | missing"));
        let m = Message::parse(build(Some(&orm("2.3.1")), AckCode::AE, Some(&e), "20240105", "A3").as_bytes()).unwrap();
        assert_eq!(m.value("ERR", 1, 1).as_deref(), Some("OBR"));
        assert_eq!(m.value("ERR", 1, 3).as_deref(), Some("18"));
        assert_eq!(m.value("ERR", 1, 4).as_deref(), Some("101"));
        // A message we could not read at all still gets an AR with defaults.
        let ar = build(None, AckCode::AR, Some(&e), "20240105", "A4");
        assert!(Message::parse(ar.as_bytes()).unwrap().value("MSA", 1, 1).as_deref() == Some("AR"));
    }
}
