//! HL7 v2 messages (v2.3.1–2.5.1): parsing with the separators MSH declares, escape
//! sequences, character sets, and building messages and ACKs.
//!
//! - Segments end with CR, LF or CRLF (senders differ; all are accepted).
//! - MSH-1 is the field separator and MSH-2 the encoding characters (component,
//!   repetition, escape, subcomponent; a fifth, truncation, is ignored).
//! - Field numbering is HL7's: `MSH-9` is `field("MSH", 9)`, so MSH's numbers count the
//!   field separator as MSH-1. Components, repetitions and subcomponents count from 1.
//! - Text is decoded per MSH-18: UTF-8 (`UNICODE UTF-8`), Latin-1 (`8859/1`), ASCII or
//!   unspecified; bytes that are not valid UTF-8 fall back to Latin-1 (and say so).
//! - Values read with [`Message::value`] are unescaped: `\F\ \S\ \T\ \R\ \E\`, `\Xhh…\`,
//!   `\.br\` (a line break); other sequences (formatting, `\H\`/`\N\` highlighting) are
//!   dropped.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message does not start with an MSH segment")]
    NoMsh,
    #[error("MSH-2 (encoding characters) is missing or malformed")]
    BadEncodingCharacters,
    #[error("{0}")]
    Segment(String),
}

/// The separators a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
}

impl Default for Separators {
    fn default() -> Self {
        Separators { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' }
    }
}

impl Separators {
    /// MSH-2 as written in a message.
    pub fn encoding_characters(&self) -> String {
        [self.component, self.repetition, self.escape, self.subcomponent].iter().collect()
    }

    /// Escapes text for a field value (the inverse of [`Message::value`]'s unescaping).
    pub fn escape(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                c if c == self.escape => out.push_str(&format!("{e}E{e}", e = self.escape)),
                c if c == self.field => out.push_str(&format!("{e}F{e}", e = self.escape)),
                c if c == self.component => out.push_str(&format!("{e}S{e}", e = self.escape)),
                c if c == self.subcomponent => out.push_str(&format!("{e}T{e}", e = self.escape)),
                c if c == self.repetition => out.push_str(&format!("{e}R{e}", e = self.escape)),
                '\r' => {}
                '\n' => out.push_str(&format!("{e}.br{e}", e = self.escape)),
                c => out.push(c),
            }
        }
        out
    }

    fn unescape(&self, text: &str) -> String {
        if !text.contains(self.escape) {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(self.escape) {
            out.push_str(&rest[..i]);
            let after = &rest[i + self.escape.len_utf8()..];
            let Some(j) = after.find(self.escape) else {
                out.push_str(&rest[i..]); // an unterminated escape stays as written
                return out;
            };
            let seq = &after[..j];
            match seq {
                "F" => out.push(self.field),
                "S" => out.push(self.component),
                "T" => out.push(self.subcomponent),
                "R" => out.push(self.repetition),
                "E" => out.push(self.escape),
                ".br" => out.push('\n'),
                s if s.starts_with('X') && s.len() > 1 && s.len() % 2 == 1 && s[1..].bytes().all(|b| b.is_ascii_hexdigit()) => {
                    let bytes: Option<Vec<u8>> = (1..s.len()).step_by(2).map(|k| u8::from_str_radix(&s[k..k + 2], 16).ok()).collect();
                    match bytes {
                        Some(b) => out.push_str(&decode_text(&b, None).0),
                        None => out.push_str(&rest[i..i + self.escape.len_utf8() * 2 + seq.len()]),
                    }
                }
                _ => {} // formatting (\H\, \N\, \.sp…\, \Cxxyy\ …): no text of its own
            }
            rest = &after[j + self.escape.len_utf8()..];
        }
        out.push_str(rest);
        out
    }
}

/// Decodes message bytes per MSH-18; returns the text and whether Latin-1 was used as a
/// fallback for bytes that are not UTF-8.
pub fn decode_text(bytes: &[u8], charset: Option<&str>) -> (String, bool) {
    let (text, fallback) = decode_raw(bytes, charset);
    // NUL is no character of any HL7 text (and PostgreSQL text cannot hold it).
    if text.contains('\0') {
        return (text.replace('\0', ""), fallback);
    }
    (text, fallback)
}

fn decode_raw(bytes: &[u8], charset: Option<&str>) -> (String, bool) {
    let latin1 = |b: &[u8]| b.iter().map(|&c| c as char).collect::<String>();
    if is_latin1(charset) {
        return (latin1(bytes), false);
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (latin1(bytes), true),
    }
}

/// An HL7 DTM/TS value (`YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`, component 1 of a
/// TS) as an instant; without an offset, `default_offset` is assumed. Missing parts
/// default to the start of the period.
pub fn parse_ts(text: &str, default_offset: chrono::FixedOffset) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, TimeZone};
    let text = text.trim();
    let (body, offset) = match text.find(['+', '-']) {
        Some(i) => {
            let z = &text[i + 1..];
            if z.len() != 4 || !z.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let secs = (z[..2].parse::<i32>().ok()? * 60 + z[2..].parse::<i32>().ok()?) * 60;
            let secs = if text.as_bytes()[i] == b'-' { -secs } else { secs };
            (&text[..i], chrono::FixedOffset::east_opt(secs)?)
        }
        None => (text, default_offset),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    if digits.len() < 4 || digits.len() > 14 || digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = |from: usize, default: u32| digits.get(from..from + 2).map_or(Some(default), |p| p.parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(digits[..4].parse().ok()?, part(4, 1)?, part(6, 1)?)?;
    let mut micros = 0;
    if let Some(f) = fraction {
        if f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) || digits.len() != 14 {
            return None;
        }
        micros = f.parse::<u32>().ok()? * 10u32.pow(6 - f.len() as u32);
    }
    let time = date.and_hms_micro_opt(part(8, 0)?, part(10, 0)?, part(12, 0)?, micros)?;
    offset.from_local_datetime(&time).single().map(|t| t.with_timezone(&chrono::Utc))
}

/// An instant as an HL7 DTM with its offset: `YYYYMMDDHHMMSS+0000`.
pub fn format_ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y%m%d%H%M%S+0000").to_string()
}

/// Does this MSH-18 value name ISO 8859-1?
pub fn is_latin1(charset: Option<&str>) -> bool {
    charset.map(|c| c.trim().to_ascii_uppercase()).is_some_and(|c| c.starts_with("8859/1") || c == "ISO-8859-1" || c == "LATIN1")
}

/// One segment: its fields as raw (still escaped) text. `fields[0]` is the segment ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub fields: Vec<String>,
}

impl Segment {
    pub fn id(&self) -> &str {
        &self.fields[0]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub separators: Separators,
    pub segments: Vec<Segment>,
    /// Bytes were not valid UTF-8 and were read as Latin-1.
    pub latin1_fallback: bool,
}

/// A position in a message, for errors (ERR-2) and lookups: `PID-3-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location<'a> {
    pub segment: &'a str,
    pub field: usize,
    pub component: usize,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.segment, self.field)?;
        if self.component > 1 {
            write!(f, "-{}", self.component)?;
        }
        Ok(())
    }
}

impl Message {
    /// Parses a message (the bytes inside an MLLP frame).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
        let bytes = &bytes[start..];
        if !bytes.starts_with(b"MSH") || bytes.len() < 8 {
            return Err(ParseError::NoMsh);
        }
        // MSH-18 decides the decoding; it is ASCII, so find it in the raw bytes first.
        let first_line_end = bytes.iter().position(|b| *b == b'\r' || *b == b'\n').unwrap_or(bytes.len());
        let field_sep = bytes[3] as char;
        let msh_raw = String::from_utf8_lossy(&bytes[..first_line_end]);
        let charset = msh_raw.split(field_sep).nth(17).map(|s| s.split('~').next().unwrap_or("").to_string()).filter(|s| !s.is_empty());
        let (text, latin1_fallback) = decode_text(bytes, charset.as_deref());
        let mut chars = text.chars().skip(3);
        let field = chars.next().ok_or(ParseError::BadEncodingCharacters)?;
        let enc: Vec<char> = chars.take_while(|c| *c != field && *c != '\r' && *c != '\n').collect();
        // Separators must be distinct punctuation (an alphanumeric one would split values).
        let bad = |c: &char| c.is_alphanumeric() || c.is_whitespace() || c.is_control();
        let distinct = enc.len() >= 4 && (0..4).all(|i| (i + 1..4).all(|j| enc[i] != enc[j]));
        if enc.len() < 4 || bad(&field) || enc[..4].iter().any(|c| bad(c) || *c == field) || !distinct {
            return Err(ParseError::BadEncodingCharacters);
        }
        let separators = Separators { field, component: enc[0], repetition: enc[1], escape: enc[2], subcomponent: enc[3] };
        let mut segments = Vec::new();
        for line in text.split(['\r', '\n']) {
            if line.trim().is_empty() {
                continue;
            }
            let mut fields: Vec<String> = line.split(field).map(str::to_string).collect();
            let id = fields[0].clone();
            if id.len() != 3 || !id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                return Err(ParseError::Segment(format!("{:?} is not a segment ID (segment {})", truncate(&id, 20), segments.len() + 1)));
            }
            if id == "MSH" {
                // MSH-1 is the separator itself: shift so that field numbers are HL7's.
                fields.insert(1, field.to_string());
            }
            segments.push(Segment { fields });
        }
        Ok(Message { separators, segments, latin1_fallback })
    }

    /// Segments with this ID, in order.
    pub fn segments<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.id() == id)
    }

    /// The raw (escaped) text of a field of the first such segment.
    pub fn raw_field(&self, segment: &str, field: usize) -> Option<&str> {
        self.segments.iter().find(|s| s.id() == segment).and_then(|s| s.fields.get(field)).map(String::as_str)
    }

    /// The unescaped value of `field`, repetition 1, `component`, subcomponent 1 of the
    /// first segment with this ID; `None` when empty or absent.
    pub fn value(&self, segment: &str, field: usize, component: usize) -> Option<String> {
        let seg = self.segments(segment).next()?;
        self.value_in(seg, field, component)
    }

    /// [`Message::value`] within a given segment (e.g. one OBX of many).
    pub fn value_in(&self, seg: &Segment, field: usize, component: usize) -> Option<String> {
        let raw = seg.fields.get(field)?;
        if seg.id() == "MSH" && field <= 2 {
            return Some(raw.clone()).filter(|v| !v.is_empty());
        }
        let s = &self.separators;
        let rep = raw.split(s.repetition).next()?;
        let comp = rep.split(s.component).nth(component.checked_sub(1)?)?;
        let sub = comp.split(s.subcomponent).next()?;
        let v = s.unescape(sub);
        (!v.trim().is_empty() && v != "\"\"").then_some(v)
    }

    /// The unescaped subcomponents of repetition 1, `component` of a field.
    pub fn subcomponents_in(&self, seg: &Segment, field: usize, component: usize) -> Vec<String> {
        let s = &self.separators;
        let Some(rep) = seg.fields.get(field).and_then(|raw| raw.split(s.repetition).next()) else { return Vec::new() };
        let Some(comp) = component.checked_sub(1).and_then(|c| rep.split(s.component).nth(c)) else { return Vec::new() };
        comp.split(s.subcomponent).map(|v| s.unescape(v)).collect()
    }

    /// Every repetition of a field's component, unescaped.
    pub fn repetitions_in(&self, seg: &Segment, field: usize, component: usize) -> Vec<String> {
        let Some(raw) = seg.fields.get(field) else { return Vec::new() };
        let s = &self.separators;
        raw.split(s.repetition)
            .filter_map(|rep| rep.split(s.component).nth(component.saturating_sub(1)))
            .map(|c| s.unescape(c.split(s.subcomponent).next().unwrap_or("")))
            .filter(|v| !v.trim().is_empty())
            .collect()
    }

    /// MSH-9 as `TYPE^EVENT` parts, e.g. ("ORM", "O01").
    pub fn message_type(&self) -> (Option<String>, Option<String>) {
        (self.value("MSH", 9, 1), self.value("MSH", 9, 2))
    }

    pub fn control_id(&self) -> Option<String> {
        self.value("MSH", 10, 1)
    }

    /// The bytes to send: [`Message::encode`] in the character set MSH-18 names
    /// (Latin-1 for `8859/1`, a character outside it becomes `?`; UTF-8 otherwise).
    pub fn to_bytes(&self) -> Vec<u8> {
        let text = self.encode();
        if is_latin1(self.raw_field("MSH", 18).map(|f| f.split(self.separators.repetition).next().unwrap_or(""))) {
            text.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')).collect()
        } else {
            text.into_bytes()
        }
    }

    /// Serializes with CR segment ends (what v2 mandates on the wire), as text.
    pub fn encode(&self) -> String {
        let f = self.separators.field.to_string();
        self.segments
            .iter()
            .map(|s| {
                if s.id() == "MSH" {
                    let mut fields = s.fields.clone();
                    fields.remove(1);
                    fields.join(&f)
                } else {
                    s.fields.join(&f)
                }
            })
            .collect::<Vec<_>>()
            .join("\r")
            + "\r"
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORM: &str = "MSH|^~\\&|RIS|GENHOSP|RAD|PLATFORM|20240105101500||ORM^O01^ORM_O01|MSG00001|P|2.3.1\r\
PID|1||P-12345^^^GENHOSP^MR||M\\S\\ller^J\\T\\rgen||19700101|M\r\
ORC|NW|PL-1|FL-1||SC\r\
OBR|1|PL-1|FL-1|CTCHEST^CT Chest\\F\\Thorax^L|||20240105101000|||||||||DR1^Who^Doc||ACC-77|RP-1|||||CT\r\
ZDS|1.2.840.113619.2.55.3.604688119.969.1268071029.320^RIS^Application^DICOM\r";

    #[test]
    fn timestamps_take_any_precision_and_an_offset() {
        let utc = chrono::FixedOffset::east_opt(0).unwrap();
        let plus2 = chrono::FixedOffset::east_opt(7200).unwrap();
        let t = |s: &str, o| parse_ts(s, o).map(|t| t.to_rfc3339());
        assert_eq!(t("20261205103000", utc).as_deref(), Some("2026-12-05T10:30:00+00:00"));
        assert_eq!(t("20261205103000", plus2).as_deref(), Some("2026-12-05T08:30:00+00:00"));
        assert_eq!(t("202612051030-0500", plus2).as_deref(), Some("2026-12-05T15:30:00+00:00"));
        assert_eq!(t("20261205", utc).as_deref(), Some("2026-12-05T00:00:00+00:00"));
        assert_eq!(t("2026", utc).as_deref(), Some("2026-01-01T00:00:00+00:00"));
        assert_eq!(t("20261205103000.25", utc).as_deref(), Some("2026-12-05T10:30:00.250+00:00"));
        for bad in ["", "2026120", "20261305", "20261205250000", "20261205+05", "abc", "20261205103000.1234567"] {
            assert_eq!(t(bad, utc), None, "{bad}");
        }
        assert_eq!(format_ts(parse_ts("20261205103000", utc).unwrap()), "20261205103000+0000");
    }

    #[test]
    fn fields_components_and_escapes_use_the_declared_separators() {
        let m = Message::parse(ORM.as_bytes()).unwrap();
        assert_eq!(m.message_type(), (Some("ORM".into()), Some("O01".into())));
        assert_eq!(m.control_id().as_deref(), Some("MSG00001"));
        assert_eq!(m.value("MSH", 1, 1).as_deref(), Some("|"));
        assert_eq!(m.value("MSH", 2, 1).as_deref(), Some("^~\\&"));
        assert_eq!(m.value("MSH", 12, 1).as_deref(), Some("2.3.1"));
        assert_eq!(m.value("PID", 5, 1).as_deref(), Some("M^ller"));
        assert_eq!(m.value("PID", 5, 2).as_deref(), Some("J&rgen"));
        assert_eq!(m.value("OBR", 4, 2).as_deref(), Some("CT Chest|Thorax"));
        assert_eq!(m.value("OBR", 18, 1).as_deref(), Some("ACC-77"));
        assert_eq!(m.value("OBR", 24, 1).as_deref(), Some("CT"));
        assert_eq!(m.value("ZDS", 1, 1).as_deref(), Some("1.2.840.113619.2.55.3.604688119.969.1268071029.320"));
        assert_eq!(m.value("OBR", 99, 1), None);
    }

    #[test]
    fn lf_and_crlf_segment_ends_and_other_separators_parse_alike() {
        let lf = ORM.replace('\r', "\n");
        let crlf = ORM.replace('\r', "\r\n");
        let a = Message::parse(ORM.as_bytes()).unwrap();
        assert_eq!(Message::parse(lf.as_bytes()).unwrap(), a);
        assert_eq!(Message::parse(crlf.as_bytes()).unwrap(), a);
        let odd = "MSH#$%!@#RIS#H#RAD#P#20240105##ORM$O01#C9#P#2.5.1\rPID#1##P-1##A!F!B$C\r";
        let m = Message::parse(odd.as_bytes()).unwrap();
        assert_eq!(m.message_type().1.as_deref(), Some("O01"));
        assert_eq!(m.value("PID", 5, 1).as_deref(), Some("A#B"), "\\F\\ is the field separator, whatever it is");
        assert_eq!(m.value("PID", 5, 2).as_deref(), Some("C"));
    }

    #[test]
    fn character_sets_hex_escapes_and_line_breaks() {
        let latin1: Vec<u8> = b"MSH|^~\\&|RIS|H|RAD|P|20240105||ORU^R01|C1|P|2.5.1||||||8859/1\rPID|1||P-1||M\xfcller^Ren\xe9\r".to_vec();
        let m = Message::parse(&latin1).unwrap();
        assert_eq!(m.value("PID", 5, 1).as_deref(), Some("Müller"));
        assert_eq!(m.value("PID", 5, 2).as_deref(), Some("René"));
        assert!(!m.latin1_fallback, "declared, not guessed");
        assert_eq!(m.to_bytes(), latin1, "sent back in the character set it declares");
        let undeclared: Vec<u8> = b"MSH|^~\\&|RIS|H|RAD|P|20240105||ORU^R01|C1|P|2.5.1\rPID|1||P-1||M\xfcller\r".to_vec();
        let m = Message::parse(&undeclared).unwrap();
        assert_eq!(m.value("PID", 5, 1).as_deref(), Some("Müller"));
        assert!(m.latin1_fallback);
        let utf8 = "MSH|^~\\&|RIS|H|RAD|P|20240105||ORU^R01|C1|P|2.5.1||||||UNICODE UTF-8\rOBX|1|TX|||Line one\\.br\\Line two \\XC3A9\\ end\r";
        let m = Message::parse(utf8.as_bytes()).unwrap();
        assert_eq!(m.value("OBX", 5, 1).as_deref(), Some("Line one\nLine two é end"));
    }

    #[test]
    fn escape_round_trips_and_bad_messages_are_named() {
        let s = Separators::default();
        let text = "a|b^c&d~e\\f\nnext";
        assert_eq!(s.unescape(&s.escape(text)), text);
        assert_eq!(Message::parse(b"PID|1"), Err(ParseError::NoMsh));
        assert_eq!(Message::parse(b"MSH|^~"), Err(ParseError::NoMsh));
        assert_eq!(Message::parse(b"MSH|^~|RIS|H"), Err(ParseError::BadEncodingCharacters));
        assert!(matches!(Message::parse(b"MSH|^~\\&|RIS\rthis is not a segment\r"), Err(ParseError::Segment(_))));
        let m = Message::parse(ORM.as_bytes()).unwrap();
        assert_eq!(Message::parse(m.encode().as_bytes()).unwrap(), m, "encode then parse is the identity");
        // Found by the fuzzer: MSH-2 at the very end of an unterminated MSH.
        let bare = Message::parse(b"MSH|^~\\&\x84\x9d").unwrap();
        // Found by the fuzzer: letters as separators.
        assert_eq!(Message::parse(b"MSHA|@^~-&A|A"), Err(ParseError::BadEncodingCharacters));
        // Found by the fuzzer: a hex escape holding a multi-byte character.
        assert_eq!(s.unescape("a\\X\u{80}0\\b"), "ab");
        assert_eq!(Message::parse(bare.encode().as_bytes()).unwrap().segments, bare.segments);
    }
}
