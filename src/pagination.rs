//! Keyset pagination shared by list endpoints: a stable order on
//! `(created_at, id)` and an opaque cursor naming the last row returned.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::FieldError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "c")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "i")]
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        B64.encode(serde_json::to_vec(self).expect("a cursor serializes"))
    }

    pub fn decode(text: &str) -> Result<Self, FieldError> {
        B64.decode(text)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| FieldError::new("cursor", "is not a cursor this service issued"))
    }
}

/// `limit` and `cursor` of a list request, validated.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: i64,
    pub after: Option<Cursor>,
}

impl PageRequest {
    pub fn parse(limit: Option<&str>, cursor: Option<&str>, errors: &mut Vec<FieldError>) -> Self {
        let limit = match limit.map(str::parse::<i64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => {
                errors.push(FieldError::new("limit", format!("must be an integer from 1 to {MAX_LIMIT}")));
                DEFAULT_LIMIT
            }
        };
        let after = match cursor.filter(|c| !c.is_empty()).map(Cursor::decode) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                errors.push(e);
                None
            }
        };
        Self { limit, after }
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }
}

/// One page of a list answer.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows in cursor order.
    pub fn from_rows<R>(mut rows: Vec<R>, request: &PageRequest, key: impl Fn(&R) -> Cursor, view: impl Fn(R) -> T) -> Self {
        let more = rows.len() as i64 > request.limit;
        rows.truncate(request.limit as usize);
        let next_cursor = if more { rows.last().map(|r| key(r).encode()) } else { None };
        Page { items: rows.into_iter().map(view).collect(), next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_garbage_is_a_field_error() {
        let c = Cursor { created_at: crate::db::now(), id: Uuid::new_v4() };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert_eq!(Cursor::decode("zzz").unwrap_err().field, "cursor");
    }

    #[test]
    fn limit_is_bounded() {
        let mut errors = vec![];
        assert_eq!(PageRequest::parse(Some("0"), None, &mut errors).limit, DEFAULT_LIMIT);
        assert_eq!(errors.len(), 1);
        assert_eq!(PageRequest::parse(Some("10"), None, &mut vec![]).limit, 10);
    }
}
