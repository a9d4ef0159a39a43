//! PACS endpoint use cases, shared by every front end.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::types::Json;
use uuid::Uuid;

use super::connectivity::{self, TestReport};
use super::dicomweb::{DicomWebClient, TokenCache};
use super::secrets::{self, open_credentials, CredentialError};
use super::store::{EndpointFilter, EndpointRow, PacsStore};
use super::validate::{self, EndpointInput};
use super::AuthMode;
use crate::auth::TenantId;
use crate::crypto::SecretBox;
use crate::db::StoreError;
use crate::error::FieldError;
use crate::pagination::{Page, PageRequest};

#[derive(Debug, thiserror::Error)]
pub enum PacsError {
    #[error("PACS endpoint not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("stored credentials are unusable: {0}")]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for PacsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => PacsError::NotFound,
            other => PacsError::Store(other),
        }
    }
}

/// An endpoint as clients see it: credentials redacted.
#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub id: Uuid,
    pub name: Option<String>,
    pub node_id: String,
    pub facility_id: Option<Uuid>,
    pub qido_url: String,
    pub wado_url: Option<String>,
    pub stow_url: Option<String>,
    pub auth_mode: String,
    pub auth_config: Value,
    pub timeout_ms: i32,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_test: Option<Value>,
}

impl From<EndpointRow> for EndpointView {
    fn from(row: EndpointRow) -> Self {
        EndpointView {
            id: row.id,
            auth_config: secrets::redact(row.auth_config.as_ref().map(|j| &j.0)),
            name: row.name,
            node_id: row.node_id,
            facility_id: row.facility_id,
            qido_url: row.qido_url,
            wado_url: row.wado_url,
            stow_url: row.stow_url,
            auth_mode: row.auth_mode.unwrap_or_else(|| AuthMode::None.as_str().into()),
            timeout_ms: row.timeout_ms,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_test: row.last_test.map(|j| j.0),
        }
    }
}

pub struct PacsService {
    store: Arc<dyn PacsStore>,
    secrets: SecretBox,
    http: reqwest::Client,
    tokens: Arc<TokenCache>,
}

impl PacsService {
    pub fn new(store: Arc<dyn PacsStore>, secrets: SecretBox, http: reqwest::Client) -> Self {
        Self { store, secrets, http, tokens: Arc::default() }
    }

    pub fn store(&self) -> &Arc<dyn PacsStore> {
        &self.store
    }

    pub async fn create(&self, tenant: TenantId, body: &Map<String, Value>) -> Result<EndpointRow, PacsError> {
        let input = validate::validate_create(body).map_err(PacsError::Invalid)?;
        let now = crate::db::now();
        let id = Uuid::new_v4();
        let row = EndpointRow {
            id,
            tenant_id: tenant.0,
            node_id: input.node_id,
            name: Some(input.name),
            qido_url: input.qido_url,
            wado_url: input.wado_url,
            stow_url: input.stow_url,
            auth_mode: Some(input.auth_mode.as_str().into()),
            auth_config: Some(Json(Value::Object(secrets::seal(&self.secrets, tenant, id, &input.auth_config)))),
            facility_id: input.facility_id,
            active: input.active,
            created_at: now,
            updated_at: now,
            timeout_ms: input.timeout_ms,
            last_test: None,
        };
        self.store.insert(tenant, &row).await.map_err(node_conflict)?;
        tracing::info!(tenant_id = %tenant, endpoint_id = %id, node_id = %row.node_id, "PACS endpoint registered");
        Ok(row)
    }

    pub async fn get(&self, tenant: TenantId, id: Uuid) -> Result<EndpointRow, PacsError> {
        Ok(self.store.get(tenant, id).await?)
    }

    pub async fn list(&self, tenant: TenantId, filter: &EndpointFilter, page: &PageRequest) -> Result<Page<EndpointView>, PacsError> {
        let rows = self.store.list(tenant, filter, page).await?;
        Ok(Page::from_rows(rows, page, EndpointRow::cursor, EndpointView::from))
    }

    pub async fn patch(&self, tenant: TenantId, id: Uuid, body: &Map<String, Value>) -> Result<EndpointRow, PacsError> {
        let current = self.store.get(tenant, id).await?;
        let current_input = EndpointInput {
            name: current.name.clone().unwrap_or_default(),
            node_id: current.node_id.clone(),
            facility_id: current.facility_id,
            qido_url: current.qido_url.clone(),
            wado_url: current.wado_url.clone(),
            stow_url: current.stow_url.clone(),
            auth_mode: AuthMode::parse(current.auth_mode.as_deref()).unwrap_or(AuthMode::None),
            auth_config: current.auth_config.as_ref().and_then(|j| j.0.as_object().cloned()).unwrap_or_default(),
            timeout_ms: current.timeout_ms,
            active: current.active,
        };
        let next = validate::validate_patch(body, &current_input).map_err(PacsError::Invalid)?;
        let credentials_changed = next.auth_mode != current_input.auth_mode || next.auth_config != current_input.auth_config;
        let row = EndpointRow {
            node_id: next.node_id,
            name: Some(next.name),
            qido_url: next.qido_url,
            wado_url: next.wado_url,
            stow_url: next.stow_url,
            auth_mode: Some(next.auth_mode.as_str().into()),
            auth_config: Some(Json(Value::Object(secrets::seal(&self.secrets, tenant, id, &next.auth_config)))),
            facility_id: next.facility_id,
            active: next.active,
            timeout_ms: next.timeout_ms,
            updated_at: crate::db::now(),
            ..current
        };
        self.store.update(tenant, &row).await.map_err(node_conflict)?;
        if credentials_changed {
            self.tokens.invalidate(id).await;
        }
        Ok(row)
    }

    /// Deactivates an endpoint; with `purge`, deletes it if no study references it.
    pub async fn delete(&self, tenant: TenantId, id: Uuid, purge: bool) -> Result<(), PacsError> {
        if purge {
            return self.store.delete_unreferenced(tenant, id).await.map_err(|e| match e {
                StoreError::Conflict(_) => PacsError::Conflict(
                    "imaging studies reference this endpoint; it can be deactivated but not deleted".into(),
                ),
                other => other.into(),
            });
        }
        let mut row = self.store.get(tenant, id).await?;
        if row.active {
            row.active = false;
            row.updated_at = crate::db::now();
            self.store.update(tenant, &row).await?;
        }
        Ok(())
    }

    /// A DICOMweb client for a stored endpoint, credentials opened.
    pub fn client_for(&self, row: &EndpointRow) -> Result<DicomWebClient, PacsError> {
        let credentials = open_credentials(
            &self.secrets,
            TenantId(row.tenant_id),
            row.id,
            row.auth_mode.as_deref(),
            row.auth_config.as_ref().map(|j| &j.0),
        )?;
        DicomWebClient::new(
            self.http.clone(),
            self.tokens.clone(),
            row.id,
            &row.qido_url,
            credentials,
            Duration::from_millis(row.timeout_ms.max(1) as u64),
        )
        .map_err(|e| PacsError::Invalid(vec![FieldError::new("qido_url", e.to_string())]))
    }

    /// Runs the connectivity test and stores its result as the endpoint's `last_test`.
    pub async fn test(&self, tenant: TenantId, id: Uuid, patient_id: Option<&str>) -> Result<TestReport, PacsError> {
        let row = self.store.get(tenant, id).await?;
        let report = match self.client_for(&row) {
            Ok(client) => connectivity::run(&client, id, &row.qido_url, patient_id).await,
            Err(e) => TestReport {
                ok: false,
                endpoint_id: id,
                tested_at: crate::db::now(),
                steps: vec![connectivity::Step { name: "auth".into(), ok: false, latency_ms: 0, detail: e.to_string() }],
                studies: vec![],
            },
        };
        let stored = serde_json::to_value(&report).expect("a test report serializes");
        self.store.set_last_test(tenant, id, &stored).await?;
        tracing::info!(tenant_id = %tenant, endpoint_id = %id, ok = report.ok, "PACS connectivity test finished");
        Ok(report)
    }
}

fn node_conflict(e: StoreError) -> PacsError {
    match e {
        StoreError::Conflict(_) => {
            PacsError::Conflict("an active PACS endpoint already exists for this node_id; deactivate it first".into())
        }
        other => other.into(),
    }
}
