//! DICOMweb client: QIDO-RS searches against one PACS endpoint, with that endpoint's
//! timeout and credentials (none, HTTP basic, static bearer, or OAuth2 client
//! credentials with the token cached until it expires and refreshed once on a 401).

use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use tokio::sync::Mutex;
use url::Url;
use uuid::Uuid;

use super::dicom_json::{parse_dataset_array, tags, DicomObject, NotDicomJson};
use crate::config::SecretString;

/// The most a single DICOMweb response body may hold.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Guard against a PACS that pages forever.
const MAX_PAGES: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// RFC 6749 §2.3.1 HTTP Basic with client id and secret (the default).
    Basic,
    /// Client id and secret in the form body.
    Post,
}

/// Opened credentials of an endpoint. Secret parts never print.
#[derive(Clone, Debug)]
pub enum Credentials {
    None,
    Basic { username: String, password: SecretString },
    Bearer { token: SecretString },
    OAuth2 { token_url: String, client_id: String, client_secret: SecretString, scope: Option<String>, client_auth: ClientAuth },
}

/// Why a DICOMweb call failed, phrased for the engineer who must fix it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DicomWebError {
    #[error("timed out after {after_ms} ms waiting for {what}")]
    Timeout { after_ms: u64, what: String },
    #[error("could not connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("TLS error talking to {target}: {reason}")]
    Tls { target: String, reason: String },
    #[error("{0}")]
    Transport(String),
    #[error("the PACS answered {status} to {url}: the credentials were rejected{challenge}")]
    Unauthorized { status: u16, url: String, challenge: String },
    #[error("OAuth2 token request to {token_url} failed: {reason}")]
    Token { token_url: String, reason: String },
    #[error("the PACS answered HTTP {status} to {url}{snippet}")]
    Status { status: u16, url: String, snippet: String },
    #[error("not DICOM JSON from {url}: {reason}")]
    NotDicomJson { url: String, reason: String },
    #[error("invalid endpoint URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// OAuth2 access tokens shared by all requests of the process.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    endpoint: Uuid,
    token_url: String,
    client_id: String,
}

struct CachedToken {
    access_token: SecretString,
    expires_at: Instant,
}

impl TokenCache {
    /// Forgets the tokens of an endpoint (its credentials changed).
    pub async fn invalidate(&self, endpoint: Uuid) {
        self.tokens.lock().await.retain(|k, _| k.endpoint != endpoint);
    }
}

/// A fully read HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub url: String,
}

impl RawResponse {
    pub fn content_type(&self) -> Option<&str> {
        self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
    }

    fn snippet(&self) -> String {
        if self.body.is_empty() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(160)]).replace(['\n', '\r'], " ");
        format!(": {}", text.trim())
    }
}

/// One page of a QIDO-RS search.
#[derive(Debug)]
pub struct QidoPage {
    pub items: Vec<DicomObject>,
    /// 204 No Content (the standard's "no results").
    pub no_content: bool,
}

/// Every match of a QIDO-RS search, collected across pages.
#[derive(Debug, Default)]
pub struct QidoResult {
    pub studies: Vec<DicomObject>,
    pub pages: usize,
    /// The PACS kept returning studies already seen: it ignores `offset`.
    pub offset_ignored: bool,
}

#[derive(Clone)]
pub struct DicomWebClient {
    http: reqwest::Client,
    tokens: Arc<TokenCache>,
    endpoint_id: Uuid,
    qido_base: Url,
    credentials: Credentials,
    timeout: Duration,
}

impl DicomWebClient {
    pub fn new(
        http: reqwest::Client,
        tokens: Arc<TokenCache>,
        endpoint_id: Uuid,
        qido_url: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, DicomWebError> {
        let mut qido_base = Url::parse(qido_url)
            .map_err(|e| DicomWebError::BadUrl { url: qido_url.to_string(), reason: e.to_string() })?;
        // Resolve `studies` relative to the base whether or not it ends in '/'.
        if !qido_base.path().ends_with('/') {
            let path = format!("{}/", qido_base.path());
            qido_base.set_path(&path);
        }
        Ok(Self { http, tokens, endpoint_id, qido_base, credentials, timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// `{qido_url}/studies?…`
    pub fn studies_url(&self, params: &[(&str, String)]) -> Url {
        let mut url = self.qido_base.join("studies").expect("'studies' is a valid relative URL");
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// GET without credentials: does an HTTP server answer at all?
    pub async fn get_anonymous(&self, url: &Url) -> Result<RawResponse, DicomWebError> {
        self.send(url, None).await
    }

    /// GET with the endpoint's credentials. A 401 under OAuth2 refreshes the token once.
    pub async fn get(&self, url: &Url) -> Result<RawResponse, DicomWebError> {
        let response = self.send(url, self.authorization(false).await?).await?;
        if response.status == StatusCode::UNAUTHORIZED && matches!(self.credentials, Credentials::OAuth2 { .. }) {
            tracing::info!(endpoint_id = %self.endpoint_id, "PACS rejected the cached OAuth2 token; refreshing once");
            return self.send(url, self.authorization(true).await?).await;
        }
        Ok(response)
    }

    /// One page of `studies` (authenticated), checked to be DICOM JSON.
    pub async fn search_studies_page(
        &self,
        params: &[(&str, String)],
        limit: usize,
        offset: usize,
    ) -> Result<QidoPage, DicomWebError> {
        let mut all: Vec<(&str, String)> = params.to_vec();
        all.push(("limit", limit.to_string()));
        all.push(("offset", offset.to_string()));
        let url = self.studies_url(&all);
        let response = self.get(&url).await?;
        parse_qido_response(&response)
    }

    /// Every study matching `params`, following `limit`/`offset` paging until the PACS
    /// answers an empty page (a short page is not trusted as the end: some PACS cap
    /// their page size below the limit asked). Duplicates across pages are dropped.
    pub async fn search_studies(&self, params: &[(&str, String)], page_size: usize) -> Result<QidoResult, DicomWebError> {
        let mut result = QidoResult::default();
        let mut seen = HashSet::new();
        let mut offset = 0;
        while result.pages < MAX_PAGES {
            let page = self.search_studies_page(params, page_size, offset).await?;
            result.pages += 1;
            if page.items.is_empty() {
                break;
            }
            let received = page.items.len();
            let mut new = 0;
            for item in page.items {
                let key = item.string(tags::STUDY_INSTANCE_UID).unwrap_or_default();
                if key.is_empty() || seen.insert(key) {
                    new += 1;
                    result.studies.push(item);
                }
            }
            if new == 0 {
                result.offset_ignored = true;
                break;
            }
            offset += received;
        }
        Ok(result)
    }

    async fn authorization(&self, force_refresh: bool) -> Result<Option<String>, DicomWebError> {
        use base64::Engine;
        Ok(match &self.credentials {
            Credentials::None => None,
            Credentials::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw)))
            }
            Credentials::Bearer { token } => Some(format!("Bearer {}", token.expose())),
            Credentials::OAuth2 { .. } => Some(format!("Bearer {}", self.oauth2_token(force_refresh).await?.expose())),
        })
    }

    async fn oauth2_token(&self, force_refresh: bool) -> Result<SecretString, DicomWebError> {
        let Credentials::OAuth2 { token_url, client_id, client_secret, scope, client_auth } = &self.credentials else {
            unreachable!("oauth2_token is only called for OAuth2 credentials")
        };
        let key = TokenKey { endpoint: self.endpoint_id, token_url: token_url.clone(), client_id: client_id.clone() };
        // Holding the lock across the fetch makes concurrent callers share one request.
        let mut tokens = self.tokens.tokens.lock().await;
        if !force_refresh {
            if let Some(cached) = tokens.get(&key).filter(|t| t.expires_at > Instant::now()) {
                return Ok(cached.access_token.clone());
            }
        }
        let token_err = |reason: String| DicomWebError::Token { token_url: token_url.clone(), reason };
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let mut request = self.http.post(token_url).timeout(self.timeout).header(ACCEPT, "application/json");
        match client_auth {
            ClientAuth::Basic => request = request.basic_auth(client_id, Some(client_secret.expose())),
            ClientAuth::Post => {
                form.push(("client_id", client_id));
                form.push(("client_secret", client_secret.expose()));
            }
        }
        let response = request.form(&form).send().await.map_err(|e| match classify(e, self.timeout, token_url) {
            DicomWebError::Timeout { after_ms, .. } => token_err(format!("timed out after {after_ms} ms")),
            other => token_err(other.to_string()),
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| token_err(e.to_string()))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let error = v.get("error")?.as_str()?.to_string();
                    Some(match v.get("error_description").and_then(|d| d.as_str()) {
                        Some(d) => format!("{error}: {d}"),
                        None => error,
                    })
                })
                .unwrap_or_else(|| "no OAuth2 error body".into());
            tokens.remove(&key);
            return Err(token_err(format!("the token endpoint answered HTTP {} ({detail})", status.as_u16())));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("the token response is not an OAuth2 access token response ({e})")))?;
        // Refresh a little before the server's expiry; assume five minutes when it says nothing.
        let lifetime = parsed.expires_in.unwrap_or(300).saturating_sub(30);
        let token = SecretString::new(parsed.access_token);
        tokens.insert(
            key,
            CachedToken { access_token: token.clone(), expires_at: Instant::now() + Duration::from_secs(lifetime) },
        );
        Ok(token)
    }

    async fn send(&self, url: &Url, authorization: Option<String>) -> Result<RawResponse, DicomWebError> {
        let mut request = self
            .http
            .get(url.clone())
            .timeout(self.timeout)
            .header(ACCEPT, "application/dicom+json, application/json;q=0.9, */*;q=0.1");
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let started = Instant::now();
        let mut response = request.send().await.map_err(|e| classify(e, self.timeout, url.as_str()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(DicomWebError::Transport(format!(
                            "the response from {url} exceeds {} MiB",
                            MAX_BODY_BYTES / (1024 * 1024)
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(classify(e, self.timeout, url.as_str())),
            }
        }
        tracing::debug!(endpoint_id = %self.endpoint_id, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "DICOMweb GET");
        Ok(RawResponse { status, headers, body, url: redact_url(url) })
    }
}

/// Checks a QIDO-RS answer: 200 with a DICOM JSON array, or 204 for no results.
pub fn parse_qido_response(response: &RawResponse) -> Result<QidoPage, DicomWebError> {
    match response.status {
        StatusCode::NO_CONTENT => Ok(QidoPage { items: Vec::new(), no_content: true }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(unauthorized(response)),
        StatusCode::OK => {
            let not_dicom = |reason: String| DicomWebError::NotDicomJson { url: response.url.clone(), reason };
            let content_type = response.content_type().unwrap_or("");
            let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if !(media == "application/dicom+json" || media == "application/json" || media.is_empty()) {
                return Err(not_dicom(format!("Content-Type is {content_type:?}, expected application/dicom+json")));
            }
            if response.body.iter().all(u8::is_ascii_whitespace) {
                return Ok(QidoPage { items: Vec::new(), no_content: false });
            }
            let items = parse_dataset_array(&response.body).map_err(|NotDicomJson(reason)| not_dicom(reason))?;
            Ok(QidoPage { items, no_content: false })
        }
        status => Err(DicomWebError::Status { status: status.as_u16(), url: response.url.clone(), snippet: response.snippet() }),
    }
}

pub fn unauthorized(response: &RawResponse) -> DicomWebError {
    let challenge = response
        .headers
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(|c| format!(" (WWW-Authenticate: {c})"))
        .unwrap_or_default();
    DicomWebError::Unauthorized { status: response.status.as_u16(), url: response.url.clone(), challenge }
}

/// A URL as it may appear in messages: no user-info, no query (it may carry PHI).
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

/// Turns a reqwest failure into words: refused, timed out, TLS, DNS.
pub fn classify(e: reqwest::Error, timeout: Duration, url: &str) -> DicomWebError {
    let target = Url::parse(url)
        .ok()
        .map(|u| format!("{}:{}", u.host_str().unwrap_or("?"), u.port_or_known_default().unwrap_or(0)))
        .unwrap_or_else(|| url.to_string());
    let mut chain = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    let lower = text.to_ascii_lowercase();
    if e.is_timeout() || lower.contains("timed out") {
        return DicomWebError::Timeout { after_ms: timeout.as_millis() as u64, what: format!("{target} to answer") };
    }
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") || lower.contains("corrupt message") {
        return DicomWebError::Tls { target, reason: text };
    }
    if e.is_connect() {
        let reason = if lower.contains("connection refused") {
            "connection refused (nothing listens on that port, or a firewall rejects it)".to_string()
        } else if lower.contains("dns") || lower.contains("failed to lookup") || lower.contains("name or service") {
            format!("the host name does not resolve ({text})")
        } else {
            text
        };
        return DicomWebError::Connect { target, reason };
    }
    DicomWebError::Transport(format!("request to {target} failed: {}", if text.is_empty() { e.to_string() } else { text }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, content_type: &str, body: &str) -> RawResponse {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, content_type.parse().unwrap());
        RawResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: body.as_bytes().to_vec(),
            url: "http://pacs/studies".into(),
        }
    }

    #[test]
    fn qido_204_is_no_results_and_html_is_not_dicom_json() {
        assert!(parse_qido_response(&response(204, "text/plain", "")).unwrap().no_content);
        let e = parse_qido_response(&response(200, "text/html", "<html/>")).unwrap_err();
        assert!(e.to_string().contains("Content-Type is \"text/html\""), "{e}");
        let e = parse_qido_response(&response(500, "text/plain", "boom")).unwrap_err();
        assert!(e.to_string().contains("HTTP 500") && e.to_string().contains("boom"), "{e}");
    }

    #[test]
    fn studies_url_is_relative_to_the_base_with_or_without_slash() {
        for base in ["http://pacs:8042/dicom-web", "http://pacs:8042/dicom-web/"] {
            let client = DicomWebClient::new(
                reqwest::Client::new(),
                Arc::default(),
                Uuid::nil(),
                base,
                Credentials::None,
                Duration::from_secs(1),
            )
            .unwrap();
            let url = client.studies_url(&[("PatientID", "A B&C".into())]);
            assert_eq!(url.as_str(), "http://pacs:8042/dicom-web/studies?PatientID=A+B%26C");
        }
    }

    #[test]
    fn redacted_url_has_no_userinfo_or_query() {
        let url = Url::parse("http://u:p@pacs/dicom-web/studies?PatientID=123").unwrap();
        assert_eq!(redact_url(&url), "http://pacs/dicom-web/studies");
    }
}
