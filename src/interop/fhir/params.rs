//! FHIR search parameter values: tokens (`system|code`) and dates with prefixes.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

use crate::studies::store::Bound;

/// `system|code`, `|code` (no system), or `code` (any system).
pub fn token(value: &str) -> (Option<String>, String) {
    match value.split_once('|') {
        Some((system, code)) => (Some(system.to_string()), code.to_string()),
        None => (None, value.to_string()),
    }
}

/// Parses a FHIR date search value (`[prefix]YYYY[-MM[-DD[Thh:mm[:ss[.f]][Z|±hh:mm]]]]`)
/// into bounds on an instant. Prefixes: eq (default), ge, le, gt, lt.
pub fn date_bounds(value: &str) -> Result<Vec<Bound>, String> {
    let (prefix, text) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "le" | "gt" | "lt" | "ne" | "sa" | "eb" | "ap")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let (lo, hi) = date_range(text).ok_or_else(|| format!("{value:?} is not a FHIR date or dateTime"))?;
    Ok(match prefix {
        "eq" => vec![Bound::From(lo), Bound::Before(hi)],
        "ge" => vec![Bound::From(lo)],
        "gt" => vec![Bound::From(hi)],
        "le" => vec![Bound::Before(hi)],
        "lt" => vec![Bound::Before(lo)],
        other => return Err(format!("date prefix {other:?} is not supported (use eq, ge, le, gt, lt)")),
    })
}

/// The instants `[lo, hi)` a date value of some precision covers (UTC when no zone).
pub fn date_range(text: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let day = |d: NaiveDate| Utc.from_utc_datetime(&NaiveDateTime::new(d, NaiveTime::MIN));
    match text.len() {
        4 => {
            let y: i32 = text.parse().ok()?;
            Some((day(NaiveDate::from_ymd_opt(y, 1, 1)?), day(NaiveDate::from_ymd_opt(y + 1, 1, 1)?)))
        }
        7 => {
            let d = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok()?;
            let next = if d.month() == 12 { NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)? } else { NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)? };
            Some((day(d), day(next)))
        }
        10 => {
            let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            Some((day(d), day(d.succ_opt()?)))
        }
        _ => {
            let (at, precision) = if let Ok(t) = DateTime::parse_from_rfc3339(text) {
                (t.with_timezone(&Utc), Duration::seconds(1))
            } else if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
                (Utc.from_utc_datetime(&t), Duration::seconds(1))
            } else if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
                (Utc.from_utc_datetime(&t), Duration::minutes(1))
            } else {
                return None;
            };
            Some((at, at + precision))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn dates_of_each_precision_cover_their_range() {
        assert_eq!(date_range("2024"), Some((t("2024-01-01T00:00:00Z"), t("2025-01-01T00:00:00Z"))));
        assert_eq!(date_range("2024-12"), Some((t("2024-12-01T00:00:00Z"), t("2025-01-01T00:00:00Z"))));
        assert_eq!(date_range("2024-02-29"), Some((t("2024-02-29T00:00:00Z"), t("2024-03-01T00:00:00Z"))));
        assert_eq!(date_range("2024-01-05T10:15:00+01:00").unwrap().0, t("2024-01-05T09:15:00Z"));
        assert_eq!(date_range("2024-13"), None);
    }

    #[test]
    fn prefixes_become_bounds() {
        assert_eq!(date_bounds("ge2024-01-05").unwrap(), vec![Bound::From(t("2024-01-05T00:00:00Z"))]);
        assert_eq!(date_bounds("gt2024-01-05").unwrap(), vec![Bound::From(t("2024-01-06T00:00:00Z"))]);
        assert_eq!(date_bounds("le2024-01-05").unwrap(), vec![Bound::Before(t("2024-01-06T00:00:00Z"))]);
        assert_eq!(date_bounds("lt2024-01-05").unwrap(), vec![Bound::Before(t("2024-01-05T00:00:00Z"))]);
        assert_eq!(date_bounds("2024").unwrap().len(), 2);
        assert!(date_bounds("ne2024").is_err());
        assert!(date_bounds("yesterday").is_err());
    }

    #[test]
    fn tokens() {
        assert_eq!(token("DCM|CT"), (Some("DCM".into()), "CT".into()));
        assert_eq!(token("|CT"), (Some("".into()), "CT".into()));
        assert_eq!(token("CT"), (None, "CT".into()));
    }
}
