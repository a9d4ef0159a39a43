//! What any store can answer besides success.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// A fenced write found its lease (or job) no longer held; nothing was written.
    #[error("the lease is no longer held")]
    Fenced,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or("unique constraint").to_string())
            }
            _ => StoreError::Other(anyhow::Error::new(e)),
        }
    }
}

impl StoreError {
    /// A failure the database asks the client to retry: PostgreSQL's deadlock victim
    /// (40P01) or a serialization failure (40001). The transaction was rolled back whole.
    pub fn is_transient(&self) -> bool {
        let StoreError::Other(e) = self else { return false };
        e.chain().any(|cause| {
            matches!(cause.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("40P01") | Some("40001")))
        })
    }
}

/// Runs a whole transaction again (up to three attempts in all) when the database
/// rolled it back as a deadlock victim or a serialization failure.
pub async fn retry_transient<T, F, Fut>(mut attempt: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if tries < 3 && e.is_transient() => {
                tracing::info!(error = %e, tries, "transaction rolled back by the database; running it again");
                tokio::time::sleep(std::time::Duration::from_millis(10 * tries)).await;
            }
            other => return other,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_transient_failures_are_run_again() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r: StoreResult<()> = retry_transient(|| async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(StoreError::Conflict("x".into()))
        })
        .await;
        assert!(matches!(r, Err(StoreError::Conflict(_))));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "a conflict is not retried");
        assert!(!StoreError::Other(anyhow::anyhow!("boom")).is_transient());
    }
}
