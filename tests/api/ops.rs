//! Operational endpoints, the OpenAPI document, graceful shutdown and the token CLI.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{endpoint_body, TestApp};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let health = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.json()["database"], crate::helpers::backend());

    app.create_endpoint(&endpoint_body("n", "http://pacs/dicom-web", "u", "p")).await;
    app.get("/v1/radiology/pacs-endpoints/00000000-0000-0000-0000-000000000000", &app.reader()).await;
    let metrics = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let text = metrics.text;
    assert!(text.contains(r#"radiology_http_requests_total{method="POST",route="/v1/radiology/pacs-endpoints",status="201"} 1"#), "{text}");
    assert!(text.contains(r#"route="/v1/radiology/pacs-endpoints/{id}",status="404"} 1"#), "route templates, never raw paths: {text}");
    assert!(text.contains("radiology_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/radiology/pacs-endpoints\",le=\"+Inf\"} 1"));
    assert!(text.contains("radiology_db_pool_connections{backend="));
    assert!(text.contains("radiology_db_pool_max_connections"));
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = TestApp::spawn().await;
    app.db.close().await;
    let ready = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Every operation the OpenAPI document lists exists with that method (it demands a
/// token), and every /v1 route the tests use is documented.
#[tokio::test]
async fn openapi_describes_every_v1_route() {
    let app = TestApp::spawn().await;
    let doc: Value = app.request(Method::GET, "/openapi.json", None, None).await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        assert!(path.starts_with("/v1/"), "{path}");
        let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000").replace("{run}", "00000000-0000-0000-0000-000000000000").replace("{seq}", "1");
        for m in ["get", "post", "patch", "delete", "put"] {
            if item.get(m).is_none() {
                continue;
            }
            operations += 1;
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = app.request(method, &concrete, None, None).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {path} is documented but answers {}", r.status);
        }
    }
    for (path, methods) in [
        ("/v1/radiology/pacs-endpoints", &["get", "post"][..]),
        ("/v1/radiology/pacs-endpoints/{id}", &["get", "patch", "delete"][..]),
        ("/v1/radiology/pacs-endpoints/{id}/test", &["get"][..]),
        ("/v1/radiology/pacs-endpoints/{id}/sync", &["get", "post"][..]),
        ("/v1/radiology/imaging-studies", &["get"][..]),
        ("/v1/radiology/imaging-studies/{id}", &["get"][..]),
        ("/v1/radiology/reports", &["get"][..]),
        ("/v1/radiology/reports/{id}", &["get"][..]),
        ("/v1/radiology/orders", &["get"][..]),
        ("/v1/radiology/orders/{id}", &["get"][..]),
        ("/v1/radiology/hl7-connectors", &["get", "post"][..]),
        ("/v1/radiology/hl7-connectors/{id}", &["get", "patch", "delete"][..]),
        ("/v1/radiology/hl7-connectors/{id}/outbox", &["get"][..]),
        ("/v1/radiology/hl7-connectors/{id}/outbox/{seq}/retry", &["post"][..]),
        ("/v1/radiology/hl7-connectors/{id}/round-trip", &["post"][..]),
        ("/v1/radiology/hl7-connectors/{id}/round-trip/{run}", &["get"][..]),
        ("/v1/radiology/hl7-messages", &["get"][..]),
        ("/v1/radiology/hl7-messages/{id}", &["get"][..]),
        ("/v1/radiology/hl7-messages/{id}/reprocess", &["post"][..]),
    ] {
        for m in methods {
            assert!(paths[path].get(*m).is_some(), "{m} {path} undocumented");
        }
    }
    assert_eq!(operations, 26);
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_releases_the_port() {
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    app.stop().await;
    std::net::TcpListener::bind(&addr).expect("port released after shutdown");
}

/// `radiology token` signs with the key the server would use: the generated key in
/// the data folder when RADIOLOGY_JWT_SECRET is unset.
#[tokio::test]
async fn the_token_command_mints_tokens_the_server_accepts() {
    let (url, dir) = crate::helpers::fresh_database().await;
    let tenant = uuid::Uuid::new_v4();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_radiology"))
        .args(["token", "--tenant", &tenant.to_string(), "--sub", "alice", "--roles", "radiology.admin,radiology.read", "--ttl", "10m"])
        .env_remove("RADIOLOGY_JWT_SECRET")
        .env("RADIOLOGY_DATA_DIR", dir.path())
        .output()
        .expect("radiology token runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();

    let config = radiology::config::Config { data_dir: dir.path().into(), jwt_secret: None, ..TestApp::config_for(&url) };
    let app = TestApp::spawn_with(config).await;
    let r = app.post("/v1/radiology/pacs-endpoints", &token, &endpoint_body("cli", "http://pacs/dicom-web", "u", "p")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.get("/v1/radiology/pacs-endpoints", &token).await.json()["items"].as_array().unwrap().len(), 1);

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_radiology"))
        .args(["token", "--tenant", "not-a-uuid", "--sub", "a", "--roles", "radiology.read"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
