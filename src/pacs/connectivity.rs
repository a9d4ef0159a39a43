//! The connectivity test of a PACS endpoint, run step by step against the real
//! endpoint: `dns`, `tcp`, `tls` (https only), `http`, `auth`, `qido`, and with a
//! patient id `patient_query`. The first failing step says what went wrong; later
//! steps are not run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use url::Url;
use uuid::Uuid;

use super::dicom_json::{tags, DicomObject};
use super::dicomweb::{parse_qido_response, unauthorized, Credentials, DicomWebClient, DicomWebError, RawResponse};

/// Page size of the patient query.
const PATIENT_PAGE_SIZE: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub latency_ms: u64,
    pub detail: String,
}

/// A study as the test lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StudySummary {
    pub study_instance_uid: String,
    pub accession_number: Option<String>,
    pub study_date: Option<String>,
    pub modalities: Vec<String>,
    pub description: Option<String>,
    pub number_of_series: Option<i64>,
    pub number_of_instances: Option<i64>,
}

impl StudySummary {
    pub fn from_dicom(d: &DicomObject) -> Self {
        Self {
            study_instance_uid: d.string(tags::STUDY_INSTANCE_UID).unwrap_or_default(),
            accession_number: d.string(tags::ACCESSION_NUMBER),
            study_date: d.string(tags::STUDY_DATE),
            modalities: d.strings(tags::MODALITIES_IN_STUDY),
            description: d.string(tags::STUDY_DESCRIPTION),
            number_of_series: d.int(tags::NUMBER_OF_STUDY_RELATED_SERIES),
            number_of_instances: d.int(tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestReport {
    pub ok: bool,
    pub endpoint_id: Uuid,
    pub tested_at: DateTime<Utc>,
    pub steps: Vec<Step>,
    pub studies: Vec<StudySummary>,
}

/// Attributes asked for in the patient query (QIDO returns only defaults otherwise).
pub const STUDY_INCLUDE_FIELDS: &[&str] = &[
    tags::STUDY_DESCRIPTION,
    tags::MODALITIES_IN_STUDY,
    tags::NUMBER_OF_STUDY_RELATED_SERIES,
    tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::ISSUER_OF_PATIENT_ID,
];

struct Runner {
    steps: Vec<Step>,
}

impl Runner {
    /// Runs one step; `Err(detail)` fails it and stops the test.
    async fn step<T, F>(&mut self, name: &str, f: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<(T, String), String>>,
    {
        let started = Instant::now();
        let outcome = f.await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let (ok, detail, value) = match outcome {
            Ok((value, detail)) => (true, detail, Some(value)),
            Err(detail) => (false, detail, None),
        };
        tracing::info!(step = name, ok, latency_ms, "PACS connectivity step");
        self.steps.push(Step { name: name.into(), ok, latency_ms, detail });
        value
    }
}

/// Runs the test. `client` carries the endpoint's URL, credentials and timeout.
pub async fn run(client: &DicomWebClient, endpoint_id: Uuid, qido_url: &str, patient_id: Option<&str>) -> TestReport {
    let tested_at = crate::db::now();
    let mut runner = Runner { steps: Vec::new() };
    let studies = run_steps(&mut runner, client, qido_url, patient_id).await.unwrap_or_default();
    let ok = runner.steps.iter().all(|s| s.ok);
    TestReport { ok, endpoint_id, tested_at, steps: runner.steps, studies }
}

async fn run_steps(
    runner: &mut Runner,
    client: &DicomWebClient,
    qido_url: &str,
    patient_id: Option<&str>,
) -> Option<Vec<StudySummary>> {
    let timeout = client.timeout();
    let ms = timeout.as_millis() as u64;
    let url = Url::parse(qido_url).ok()?;
    let host = url.host_str()?.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default()?;

    let addrs: Vec<SocketAddr> = runner
        .step("dns", async {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                return Ok((vec![SocketAddr::new(ip, port)], format!("{host} is an IP address")));
            }
            match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
                Err(_) => Err(format!("DNS lookup of {host} timed out after {ms} ms")),
                Ok(Err(e)) => Err(format!("DNS lookup of {host} failed: {e} (check the host name)")),
                Ok(Ok(found)) => {
                    let addrs: Vec<SocketAddr> = found.collect();
                    if addrs.is_empty() {
                        return Err(format!("DNS lookup of {host} returned no addresses"));
                    }
                    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                    Ok((addrs, format!("{host} resolves to {}", shown.join(", "))))
                }
            }
        })
        .await?;

    let stream = runner.step("tcp", connect_any(&addrs, timeout)).await?;

    if url.scheme() == "https" {
        runner.step("tls", tls_handshake(stream, &host, timeout)).await?;
    } else {
        drop(stream);
    }

    let probe = client.studies_url(&[("limit", "1".into())]);
    let anonymous = runner
        .step("http", async {
            let r = client.get_anonymous(&probe).await.map_err(|e| e.to_string())?;
            let server = r.headers.get("server").and_then(|v| v.to_str().ok()).map(|s| format!(", Server: {s}")).unwrap_or_default();
            let detail = format!("HTTP {} from {}{server}", r.status, r.url);
            Ok((r, detail))
        })
        .await?;

    let authenticated: RawResponse = runner
        .step("auth", async {
            let response = match client.credentials() {
                Credentials::None => anonymous,
                _ => client.get(&probe).await.map_err(|e| e.to_string())?,
            };
            if matches!(response.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                let reason = unauthorized(&response).to_string();
                return Err(match client.credentials() {
                    Credentials::None => format!("{reason}; the endpoint's auth_mode is none but the PACS requires authentication"),
                    _ => reason,
                });
            }
            let detail = match client.credentials() {
                Credentials::None => "no authentication configured; the PACS did not ask for any".to_string(),
                _ => format!("credentials accepted (HTTP {})", response.status.as_u16()),
            };
            Ok((response, detail))
        })
        .await?;

    runner
        .step("qido", async {
            let page = parse_qido_response(&authenticated).map_err(|e| match e {
                DicomWebError::Status { status: 400..=499, .. } => {
                    format!("{e} — this URL does not serve QIDO-RS 'studies'; check qido_url (e.g. …/dicom-web)")
                }
                other => other.to_string(),
            })?;
            let detail = if page.no_content {
                "QIDO-RS answered 204 No Content (the PACS holds no studies)".to_string()
            } else {
                let ct = authenticated.content_type().unwrap_or("no Content-Type");
                format!("QIDO-RS answered HTTP 200 with {} study(ies) as {ct}", page.items.len())
            };
            Ok(((), detail))
        })
        .await?;

    let Some(patient_id) = patient_id else { return Some(Vec::new()) };
    runner
        .step("patient_query", async {
            let mut params: Vec<(&str, String)> = vec![("PatientID", patient_id.to_string())];
            params.extend(STUDY_INCLUDE_FIELDS.iter().map(|t| ("includefield", t.to_string())));
            let result = client.search_studies(&params, PATIENT_PAGE_SIZE).await.map_err(|e| e.to_string())?;
            if result.studies.is_empty() {
                return Err(format!(
                    "QIDO-RS answered, but found no studies for PatientID {patient_id:?}; check the patient identifier (and its issuer) on the PACS"
                ));
            }
            let studies: Vec<StudySummary> = result.studies.iter().map(StudySummary::from_dicom).collect();
            let mut detail = format!("{} study(ies) for PatientID {patient_id:?} in {} page(s)", studies.len(), result.pages);
            if result.offset_ignored {
                detail.push_str("; the PACS ignores QIDO 'offset' (pages repeat)");
            }
            Ok((studies, detail))
        })
        .await
}

async fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, String), String> {
    let ms = timeout.as_millis();
    let mut failures = Vec::new();
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, format!("connected to {addr}"))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => failures.push(format!(
                "connection refused by {addr} (nothing listens on that port, or a firewall rejects it)"
            )),
            Ok(Err(e)) => failures.push(format!("connecting to {addr} failed: {e}")),
            Err(_) => failures.push(format!("connecting to {addr} timed out after {ms} ms (host down or packets dropped)")),
        }
    }
    Err(failures.join("; "))
}

async fn tls_handshake(stream: TcpStream, host: &str, timeout: Duration) -> Result<((), String), String> {
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Err(_) => Err(format!("TLS handshake with {host} timed out after {} ms", timeout.as_millis())),
        Ok(Err(e)) => {
            let text = e.to_string();
            let hint = if text.contains("corrupt message") || text.contains("InvalidContentType") {
                " (the port may be serving plain HTTP, not HTTPS)"
            } else if text.contains("certificate") {
                " (the PACS certificate is not trusted for this host name)"
            } else {
                ""
            };
            Err(format!("TLS handshake with {host} failed: {text}{hint}"))
        }
        Ok(Ok(tls)) => {
            let (_, session) = tls.get_ref();
            let version = session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
            let suite = session.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
            Ok(((), format!("TLS handshake ok ({version}, {suite}); certificate valid for {host}")))
        }
    }
}
