//! Test harness: the real application on port 0 with a fresh database, typed request
//! helpers, real peers from the environment, and a capture of every log line.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use radiology::auth::{mint_token, TokenKeys};
use radiology::config::{Config, SecretString};
use radiology::db::Db;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

// ---- log capture -------------------------------------------------------------

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default).lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line the process has written so far (all levels, DEBUG and up).
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .json()
            .with_writer(|| CaptureWriter)
            .try_init();
    });
}

// ---- peers -----------------------------------------------------------------------

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// A peer's configuration from the environment. Under CI a missing peer fails the
/// test; elsewhere the test is skipped with a note (plain `cargo test`).
pub fn peer_env(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if in_ci() => panic!("CI=true but {what} is not available: {var} is unset (scripts/test starts it)"),
        _ => {
            eprintln!("skipping: {what} not configured ({var} unset); run scripts/test for the full suite");
            None
        }
    }
}

pub fn pg_admin_url() -> Option<String> {
    peer_env("RADIOLOGY_TEST_PG_URL", "PostgreSQL")
}

/// The Orthanc (DICOMweb) peer started by scripts/test.
#[derive(Clone, Debug)]
pub struct Orthanc {
    pub url: String,
    pub user: String,
    pub password: String,
}

impl Orthanc {
    pub fn from_env() -> Option<Self> {
        let url = peer_env("RADIOLOGY_TEST_ORTHANC_URL", "Orthanc with DICOMweb")?;
        Some(Self {
            url: url.trim_end_matches('/').to_string(),
            user: std::env::var("RADIOLOGY_TEST_ORTHANC_USER").unwrap_or_else(|_| "radiology".into()),
            password: std::env::var("RADIOLOGY_TEST_ORTHANC_PASSWORD").expect("RADIOLOGY_TEST_ORTHANC_PASSWORD"),
        })
    }

    pub fn dicomweb_url(&self) -> String {
        format!("{}/dicom-web", self.url)
    }

    /// Stores one instance of a new study for `patient_id`; returns its Study Instance UID.
    pub async fn create_study(&self, patient_id: &str, accession: &str, date: &str, modality: &str, description: &str) -> String {
        let seconds = (Uuid::new_v4().as_u128() % 86_400) as u32;
        let time = format!("{:02}{:02}{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
        self.create_study_at(patient_id, accession, date, &time, modality, description).await
    }

    /// As `create_study`, at a given StudyTime (HHMMSS).
    pub async fn create_study_at(&self, patient_id: &str, accession: &str, date: &str, time: &str, modality: &str, description: &str) -> String {
        let uid = format!("2.25.{}", Uuid::new_v4().as_u128());
        self.add_series(&uid, patient_id, accession, date, time, modality, description).await;
        uid
    }

    /// Stores one instance of a new series in study `uid` (creating the study if new).
    #[allow(clippy::too_many_arguments)]
    pub async fn add_series(&self, uid: &str, patient_id: &str, accession: &str, date: &str, time: &str, modality: &str, description: &str) {
        let series = format!("{uid}.{}", Uuid::new_v4().as_u128() % 1_000_000_000);
        let body = serde_json::json!({
            "Force": true,
            "Tags": {
                "PatientID": patient_id, "PatientName": "Test^Patient", "StudyInstanceUID": uid,
                "SeriesInstanceUID": series, "SOPInstanceUID": format!("{series}.1"),
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "AccessionNumber": accession, "StudyDate": date,
                "StudyTime": time, "Modality": modality, "StudyDescription": description
            }
        });
        let response = reqwest::Client::new()
            .post(format!("{}/tools/create-dicom", self.url))
            .basic_auth(&self.user, Some(&self.password))
            .json(&body)
            .send()
            .await
            .expect("Orthanc answers");
        assert!(response.status().is_success(), "create-dicom: {}", response.text().await.unwrap_or_default());
    }

    /// Every Study Instance UID the PACS holds (Orthanc's REST API, not DICOMweb).
    pub async fn all_study_uids(&self) -> std::collections::HashSet<String> {
        let studies: Vec<Value> = reqwest::Client::new()
            .get(format!("{}/studies?expand", self.url))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .expect("Orthanc answers")
            .json()
            .await
            .expect("Orthanc JSON");
        studies.iter().map(|s| s["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string()).collect()
    }
}

// ---- databases ---------------------------------------------------------------------

pub fn backend() -> String {
    std::env::var("RADIOLOGY_TEST_BACKEND").unwrap_or_else(|_| "sqlite".into())
}

/// A new, empty PostgreSQL database; returns its URL.
pub async fn fresh_pg_database(admin_url: &str) -> String {
    let name = format!("radiology_test_{}", Uuid::new_v4().simple());
    let admin = Db::connect(admin_url, 1).await.expect("PostgreSQL reachable at RADIOLOGY_TEST_PG_URL");
    if let Db::Postgres(pool) = &admin {
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(pool).await.expect("create test database");
    }
    admin.close().await;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin_url);
    format!("{base}/{name}")
}

/// A fresh database for the selected backend, plus the temp folder that holds it.
pub async fn fresh_database() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend().as_str() {
        "postgres" => {
            let admin = std::env::var("RADIOLOGY_TEST_PG_URL").expect("RADIOLOGY_TEST_BACKEND=postgres needs RADIOLOGY_TEST_PG_URL");
            fresh_pg_database(&admin).await
        }
        "sqlite" => format!("sqlite://{}", dir.path().join("radiology.db").display()),
        other => panic!("unknown RADIOLOGY_TEST_BACKEND {other:?}"),
    };
    (url, dir)
}

// ---- the application -------------------------------------------------------------

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub tenant: Uuid,
    pub other_tenant: Uuid,
    pub db: Db,
    pub state: radiology::AppState,
    /// Where the MLLP listener takes HL7 (host:port).
    pub mllp: String,
    keys: TokenKeys,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        let (url, dir) = fresh_database().await;
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Self::config_for(&url)
        };
        let mut app = Self::spawn_with(config).await;
        app._dir = Some(dir);
        app
    }

    pub fn config_for(database_url: &str) -> Config {
        Config {
            http_addr: "127.0.0.1:0".into(),
            database_url: database_url.into(),
            jwt_secret: Some(SecretString::new(JWT_SECRET)),
            secret_key: Some(SecretString::new("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")),
            db_max_connections: 5,
            // Tests drive sync directly (`state.sync.run_until_idle()`), not in the background.
            sync_enabled: false,
            sync_lease_seconds: 2,
            mllp_addr: "127.0.0.1:0".into(),
            hl7_outbound_poll_ms: 100,
            ..Config::default()
        }
    }

    pub async fn spawn_with(config: Config) -> Self {
        init_logging();
        let app = radiology::Application::build(&config).await.expect("application builds");
        let addr = app.local_addr();
        let mllp = app.mllp_addr().map(|a| a.to_string()).unwrap_or_default();
        let db = app.state().db.clone();
        let state = app.state().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            tenant: Uuid::new_v4(),
            other_tenant: Uuid::new_v4(),
            keys: TokenKeys::new(JWT_SECRET.as_bytes()),
            db,
            state,
            mllp,
            shutdown: Some(tx),
            server: Some(server),
            _dir: None,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran cleanly");
        }
    }

    pub fn token_for(&self, tenant: Uuid, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        mint_token(&self.keys, tenant, "test-user", &roles, chrono::Duration::hours(1)).unwrap()
    }

    pub fn admin(&self) -> String {
        self.token_for(self.tenant, &["radiology.admin"])
    }

    pub fn reader(&self) -> String {
        self.token_for(self.tenant, &["radiology.read"])
    }

    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("server answers");
        Response { status: response.status(), headers: response.headers().clone(), text: response.text().await.unwrap() }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// Registers an endpoint as an administrator of `self.tenant`; returns its JSON.
    pub async fn create_endpoint(&self, body: &Value) -> Value {
        let r = self.post("/v1/radiology/pacs-endpoints", &self.admin(), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()
    }

    /// Runs the connectivity test of an endpoint; returns the report.
    pub async fn test_endpoint(&self, id: &str, patient_id: Option<&str>) -> Value {
        let query = patient_id.map(|p| format!("?patient_id={}", urlencode(p))).unwrap_or_default();
        let r = self.get(&format!("/v1/radiology/pacs-endpoints/{id}/test{query}"), &self.admin()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A basic-auth endpoint body pointing at `qido_url`.
pub fn endpoint_body(node_id: &str, qido_url: &str, username: &str, password: &str) -> Value {
    serde_json::json!({
        "name": format!("PACS {node_id}"), "node_id": node_id, "qido_url": qido_url,
        "auth_mode": "basic", "auth_config": {"username": username, "password": password}
    })
}

/// The names of the steps run, and the failing one's detail.
pub fn failed_step(report: &Value) -> (String, String) {
    let step = report["steps"].as_array().unwrap().iter().find(|s| s["ok"] == false).expect("a failed step");
    (step["name"].as_str().unwrap().to_string(), step["detail"].as_str().unwrap().to_string())
}

pub fn step_names(report: &Value) -> Vec<String> {
    report["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

/// Validates FHIR resources with the independent validator (tests/fhir_validate.py,
/// PyPI fhir.resources). scripts/test provides the Python that has it.
pub fn validate_fhir(resources: &[Value]) {
    let Some(python) = peer_env("RADIOLOGY_TEST_FHIR_PYTHON", "the FHIR validator (python with fhir.resources)") else { return };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir_validate.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the FHIR validator starts");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(serde_json::to_string(resources).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "FHIR validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real `radiology serve` child process on `database_url`, with the keys the tests use
/// and `env` on top (RADIOLOGY_* settings). The caller kills it (SIGKILL in crash tests).
pub fn spawn_serve(database_url: &str, data_dir: &std::path::Path, config: &Config, env: &[(&str, &str)]) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_radiology"));
    command
        .arg("serve")
        .env("RADIOLOGY_DATABASE_URL", database_url)
        .env("RADIOLOGY_DATA_DIR", data_dir)
        .env("RADIOLOGY_HTTP_ADDR", "127.0.0.1:0")
        .env("RADIOLOGY_MLLP_ADDR", "")
        .env("RADIOLOGY_JWT_SECRET", JWT_SECRET)
        .env("RADIOLOGY_SECRET_KEY", config.secret_key.as_ref().expect("tests set a secret key").expose())
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().expect("radiology serve starts")
}

// ---- HL7 v2 peers (python-hl7, from scripts/test) ------------------------------------

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fixture of tests/hl7 (bytes as written).
pub fn hl7_fixture(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hl7").join(name)).expect("fixture")
}

/// Sends a file with python-hl7's `mllp_send --loose` to the MLLP address; returns the
/// ACK text it printed (frame bytes stripped). `None` when python-hl7 is not there.
pub fn mllp_send_file(mllp: &str, path: &std::path::Path) -> Option<String> {
    let bin = peer_env("RADIOLOGY_TEST_MLLP_SEND", "python-hl7's mllp_send")?;
    let (host, port) = mllp.rsplit_once(':').unwrap();
    let mut child = std::process::Command::new(bin)
        .args(["--loose", "-f"])
        .arg(path)
        .args(["-p", port, host])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mllp_send starts");
    // mllp_send has no timeout of its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("mllp_send did not finish within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "mllp_send failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).replace(['\x0b', '\x1c'], "").trim().to_string())
}

/// Sends a fixture with `mllp_send` (async wrapper).
pub async fn mllp_send(mllp: &str, fixture: &str) -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hl7").join(fixture);
    let mllp = mllp.to_string();
    tokio::task::spawn_blocking(move || mllp_send_file(&mllp, &path)).await.unwrap()
}

/// A field of an ACK as text: (segment, field, component), HL7 numbering.
pub fn ack_field(ack: &str, segment: &str, field: usize, component: usize) -> Option<String> {
    let line = ack.split(['\r', '\n']).find(|l| l.starts_with(segment))?;
    let mut fields: Vec<&str> = line.split('|').collect();
    if segment == "MSH" {
        fields.insert(1, "|");
    }
    let value = fields.get(field)?.split('~').next()?.split('^').nth(component - 1)?;
    (!value.is_empty()).then(|| value.to_string())
}

/// The receiving RIS (tests/hl7_ris.py on python-hl7's asyncio MLLP server).
pub struct Ris {
    child: std::process::Child,
    pub port: u16,
    pub record: std::path::PathBuf,
}

impl Ris {
    /// Starts it on `port` (0 = any); `nak_first` messages are answered AE.
    pub fn start(port: u16, nak_first: u32, record: &std::path::Path) -> Option<Self> {
        let python = peer_env("RADIOLOGY_TEST_HL7_PYTHON", "python-hl7 (the RIS peer)")?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hl7_ris.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--nak-first", &nak_first.to_string(), "--record"])
            .arg(record)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the RIS starts");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        let port = line.trim().strip_prefix("LISTENING ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("RIS said {line:?}"));
        Some(Ris { child, port, record: record.to_path_buf() })
    }

    /// What it received, in order: (control id, message type, raw text, how it answered).
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Ris {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
