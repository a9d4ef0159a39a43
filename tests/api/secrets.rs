//! Credentials never leave the service: not in responses, logs, or the database in
//! plain text. Plain text left in the table by hand still works and is sealed at start.

use radiology::db::Db;
use serde_json::json;
use uuid::Uuid;
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{captured_logs, fresh_database, TestApp};

async fn raw_auth_configs(db: &Db) -> String {
    let rows: Vec<(String,)> = radiology::on_db!(db, pool => sqlx::query_as(
        "SELECT CAST(auth_config AS TEXT) FROM pacs_endpoints").fetch_all(pool).await).unwrap();
    rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n")
}

/// A PACS that accepts only `user:password` (basic) on QIDO.
async fn pacs_requiring(user: &str, password: &str) -> MockServer {
    use base64::Engine;
    let server = MockServer::start().await;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    Mock::given(method("GET"))
        .and(header("authorization", expected.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_raw("[]", "application/dicom+json"))
        .mount(&server)
        .await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401)).mount(&server).await;
    server
}

#[tokio::test]
async fn no_secret_in_any_response_log_line_or_database_row() {
    use base64::Engine;
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let token = format!("tok-{}", Uuid::new_v4().simple());
    let server = pacs_requiring("svc", &password).await;
    let app = TestApp::spawn().await;
    let mut bodies = Vec::new();

    let body = json!({"name": "p", "node_id": "n1", "qido_url": format!("{}/dicom-web", server.uri()),
        "auth_mode": "basic", "auth_config": {"username": "svc", "password": password}});
    let created = app.post("/v1/radiology/pacs-endpoints", &app.admin(), &body).await;
    bodies.push(created.text.clone());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let report = app.test_endpoint(&id, Some("P1")).await;
    assert_eq!(report["steps"][3]["name"], "auth");
    assert_eq!(report["steps"][3]["ok"], true, "the sealed password opens and is accepted: {report:#}");
    bodies.push(report.to_string());
    bodies.push(app.get(&format!("/v1/radiology/pacs-endpoints/{id}"), &app.admin()).await.text);
    bodies.push(app.get("/v1/radiology/pacs-endpoints", &app.reader()).await.text);
    // A bearer endpoint, and an invalid request carrying a secret.
    let bearer = json!({"name": "b", "node_id": "n2", "qido_url": "http://pacs/dicom-web", "auth_mode": "bearer", "auth_config": {"token": token}});
    bodies.push(app.post("/v1/radiology/pacs-endpoints", &app.admin(), &bearer).await.text);
    let invalid = json!({"name": "", "node_id": "n3", "qido_url": "x", "auth_mode": "basic", "auth_config": {"username": "u", "password": password}});
    bodies.push(app.post("/v1/radiology/pacs-endpoints", &app.admin(), &invalid).await.text);
    bodies.push(app.patch(&format!("/v1/radiology/pacs-endpoints/{id}"), &app.admin(), &json!({"auth_config": {"username": "svc", "password": "***"}})).await.text);

    let basic_header = base64::engine::general_purpose::STANDARD.encode(format!("svc:{password}"));
    let stored = raw_auth_configs(&app.db).await;
    let logs = captured_logs();
    for secret in [password.as_str(), token.as_str(), basic_header.as_str()] {
        for b in &bodies {
            assert!(!b.contains(secret), "a response leaked a secret: {b}");
        }
        assert!(!stored.contains(secret), "plain text in the database: {stored}");
        assert!(!logs.contains(secret), "a log line leaked a secret");
    }
    assert!(logs.contains("PACS connectivity step"), "logs were captured");
}

#[tokio::test]
async fn plaintext_credentials_written_by_hand_work_and_are_sealed_at_the_next_start() {
    let server = pacs_requiring("legacy", "legacy-pw").await;
    let (url, dir) = fresh_database().await;
    let config = radiology::config::Config { data_dir: dir.path().into(), ..TestApp::config_for(&url) };
    let app = TestApp::spawn_with(config.clone()).await;
    let id = Uuid::new_v4();
    let now = radiology::db::now();
    let plain = sqlx::types::Json(json!({"username": "legacy", "password": "legacy-pw"}));
    radiology::on_db!(&app.db, pool => sqlx::query(
        "INSERT INTO pacs_endpoints (id, tenant_id, node_id, name, qido_url, auth_mode, auth_config, active, created_at, updated_at) \
         VALUES ($1, $2, 'hand', 'by hand', $3, 'basic', $4, TRUE, $5, $5)")
        .bind(id).bind(app.tenant).bind(format!("{}/dicom-web", server.uri())).bind(&plain).bind(now)
        .execute(pool).await.map(|_| ())).unwrap();

    // Plain text still works before any restart, and is never shown.
    let report = app.test_endpoint(&id.to_string(), None).await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(app.get(&format!("/v1/radiology/pacs-endpoints/{id}"), &app.admin()).await.json()["auth_config"]["password"], "***");
    let tenant = app.tenant;
    app.stop().await;

    let mut app = TestApp::spawn_with(config).await;
    app.tenant = tenant;
    let stored = raw_auth_configs(&app.db).await;
    assert!(!stored.contains("legacy-pw") && stored.contains("$sealed"), "{stored}");
    let report = app.test_endpoint(&id.to_string(), None).await;
    assert_eq!(report["ok"], true, "sealed credentials still open: {report:#}");
}
