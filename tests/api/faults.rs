//! Faults a real PACS will not produce on demand, injected with wiremock: a hang, a
//! 500, malformed DICOM JSON, OAuth2 token refresh (and its failure), capped pages and
//! a PACS that ignores `offset`.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{failed_step, step_names, TestApp};

fn study(uid: &str) -> Value {
    json!({
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00080050": {"vr": "SH", "Value": [format!("A-{uid}")]},
        "00080061": {"vr": "CS", "Value": ["CT"]}
    })
}

fn dicom_json(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_string(), "application/dicom+json")
}

async fn basic_endpoint(app: &TestApp, server: &MockServer, timeout_ms: u64) -> String {
    let body = json!({
        "name": "mock", "node_id": "mock", "qido_url": format!("{}/dicom-web", server.uri()),
        "auth_mode": "basic", "auth_config": {"username": "u", "password": "p"}, "timeout_ms": timeout_ms
    });
    app.create_endpoint(&body).await["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_hanging_pacs_times_out_after_the_endpoint_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(dicom_json(json!([])).set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let app = TestApp::spawn().await;
    let id = basic_endpoint(&app, &server, 400).await;
    let started = std::time::Instant::now();
    let report = app.test_endpoint(&id, None).await;
    let (step, detail) = failed_step(&report);
    assert_eq!(step, "http");
    assert!(detail.contains("timed out after 400 ms"), "{detail}");
    assert!(started.elapsed() < Duration::from_secs(8), "the test did not wait for the hang");
}

#[tokio::test]
async fn a_500_fails_at_qido_with_the_status() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(500).set_body_string("database locked")).mount(&server).await;
    let app = TestApp::spawn().await;
    let id = basic_endpoint(&app, &server, 2000).await;
    let (step, detail) = failed_step(&app.test_endpoint(&id, None).await);
    assert_eq!(step, "qido");
    assert!(detail.contains("HTTP 500") && detail.contains("database locked"), "{detail}");
}

#[tokio::test]
async fn malformed_dicom_json_fails_at_qido() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("[{\"0020000D\": {\"vr\": \"UI\", \"Val", "application/dicom+json"))
        .mount(&server)
        .await;
    let app = TestApp::spawn().await;
    let id = basic_endpoint(&app, &server, 2000).await;
    let (step, detail) = failed_step(&app.test_endpoint(&id, None).await);
    assert_eq!(step, "qido");
    assert!(detail.contains("not DICOM JSON") && detail.contains("not JSON"), "{detail}");
}

#[tokio::test]
async fn qido_204_means_no_results() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(204)).mount(&server).await;
    let app = TestApp::spawn().await;
    let id = basic_endpoint(&app, &server, 2000).await;
    let report = app.test_endpoint(&id, None).await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["steps"][4]["detail"].as_str().unwrap().contains("204"));
    let report = app.test_endpoint(&id, Some("P1")).await;
    assert_eq!(failed_step(&report).0, "patient_query");
}

fn oauth_body(server: &MockServer) -> Value {
    json!({
        "name": "oauth", "node_id": "oauth", "qido_url": format!("{}/dicom-web", server.uri()),
        "auth_mode": "oauth2_client_credentials",
        "auth_config": {"token_url": format!("{}/token", server.uri()), "client_id": "radiology", "client_secret": "cs-1", "scope": "pacs.read"}
    })
}

#[tokio::test]
async fn oauth2_token_is_fetched_once_and_cached_until_expiry() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET")).and(header("authorization", "Bearer tok-1")).respond_with(dicom_json(json!([study("1.2.1")]))).mount(&server).await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401)).mount(&server).await;
    let app = TestApp::spawn().await;
    let id = app.create_endpoint(&oauth_body(&server)).await["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let report = app.test_endpoint(&id, Some("P1")).await;
        assert_eq!(report["ok"], true, "{report:#}");
    }
    // The token request used HTTP Basic client authentication and asked for the scope.
    let requests = server.received_requests().await.unwrap();
    let token_request = requests.iter().find(|r| r.url.path() == "/token").unwrap();
    let form = String::from_utf8_lossy(&token_request.body);
    assert!(form.contains("grant_type=client_credentials") && form.contains("scope=pacs.read"), "{form}");
    assert!(token_request.headers.get("authorization").unwrap().to_str().unwrap().starts_with("Basic "));
}

/// The token endpoint issues `tok-old` once, then answers every request with `then`.
async fn token_endpoint_then(server: &MockServer, then: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"access_token": "tok-old", "expires_in": 3600})))
        .up_to_n_times(1)
        .mount(server)
        .await;
    Mock::given(method("POST")).and(path("/token")).respond_with(then).mount(server).await;
}

#[tokio::test]
async fn a_rejected_token_is_refreshed_once() {
    let server = MockServer::start().await;
    token_endpoint_then(&server, ResponseTemplate::new(200).set_body_json(json!({"access_token": "tok-new", "expires_in": 3600}))).await;
    Mock::given(method("GET")).and(header("authorization", "Bearer tok-new")).respond_with(dicom_json(json!([]))).mount(&server).await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401)).mount(&server).await;
    let app = TestApp::spawn().await;
    let id = app.create_endpoint(&oauth_body(&server)).await["id"].as_str().unwrap().to_string();
    let report = app.test_endpoint(&id, None).await;
    assert_eq!(report["ok"], true, "{report:#}");
    let token_calls = server.received_requests().await.unwrap().iter().filter(|r| r.url.path() == "/token").count();
    assert_eq!(token_calls, 2, "one fetch, one refresh");
}

#[tokio::test]
async fn a_401_on_token_refresh_fails_at_auth_with_the_oauth_error() {
    let server = MockServer::start().await;
    token_endpoint_then(
        &server,
        ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client", "error_description": "client secret expired"})),
    )
    .await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401)).mount(&server).await;
    let app = TestApp::spawn().await;
    let id = app.create_endpoint(&oauth_body(&server)).await["id"].as_str().unwrap().to_string();
    let report = app.test_endpoint(&id, None).await;
    let (step, detail) = failed_step(&report);
    assert_eq!(step, "auth");
    assert!(detail.contains("401") && detail.contains("invalid_client") && detail.contains("client secret expired"), "{detail}");
    assert!(!report.to_string().contains("cs-1"), "the client secret never appears");
}

/// A PACS that caps pages at 2 whatever `limit` says, repeats a study across a page
/// boundary, and ends with 204.
#[tokio::test]
async fn paging_survives_capped_pages_duplicates_and_204() {
    let server = MockServer::start().await;
    let pages = [
        ("0", json!([study("1"), study("2")])),
        ("2", json!([study("2"), study("3")])),
        ("4", json!([study("4")])),
    ];
    for (offset, body) in pages {
        Mock::given(method("GET")).and(path("/dicom-web/studies")).and(query_param("PatientID", "P1")).and(query_param("offset", offset))
            .respond_with(dicom_json(body)).mount(&server).await;
    }
    Mock::given(method("GET")).and(path("/dicom-web/studies")).and(query_param("PatientID", "P1"))
        .respond_with(ResponseTemplate::new(204)).mount(&server).await;
    Mock::given(method("GET")).respond_with(dicom_json(json!([study("1")]))).mount(&server).await;
    let app = TestApp::spawn().await;
    let id = basic_endpoint(&app, &server, 2000).await;
    let report = app.test_endpoint(&id, Some("P1")).await;
    assert_eq!(report["ok"], true, "{report:#}");
    let uids: Vec<&str> = report["studies"].as_array().unwrap().iter().map(|s| s["study_instance_uid"].as_str().unwrap()).collect();
    assert_eq!(uids, ["1", "2", "3", "4"], "each study once, none lost to the short pages");
    let limits: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r: &&Request| r.url.query().unwrap_or("").contains("PatientID=P1"))
        .map(|r| r.url.query_pairs().find(|(k, _)| k == "offset").unwrap().1.to_string())
        .collect();
    assert_eq!(limits, ["0", "2", "4", "5"], "offsets advance by what each page held");
}

#[tokio::test]
async fn a_pacs_that_ignores_offset_does_not_loop_forever() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(dicom_json(json!([study("1"), study("2")]))).mount(&server).await;
    let app = TestApp::spawn().await;
    let id = basic_endpoint(&app, &server, 2000).await;
    let report = app.test_endpoint(&id, Some("P1")).await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["studies"].as_array().unwrap().len(), 2);
    assert_eq!(step_names(&report).last().unwrap(), "patient_query");
    assert!(report["steps"][5]["detail"].as_str().unwrap().contains("ignores QIDO 'offset'"));
}
