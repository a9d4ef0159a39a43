//! Authentication, roles and tenant isolation.

use radiology::auth::{Claims, TokenKeys};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{endpoint_body, TestApp, JWT_SECRET};

const BASE: &str = "/v1/radiology/pacs-endpoints";

#[tokio::test]
async fn missing_malformed_badly_signed_or_expired_tokens_are_401() {
    let app = TestApp::spawn().await;
    let r = app.request(Method::GET, BASE, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));

    assert_eq!(app.get(BASE, "not.a.jwt").await.status, StatusCode::UNAUTHORIZED);
    let forged = radiology::auth::mint_token(
        &TokenKeys::new(b"some other key some other key 0123"),
        app.tenant,
        "mallory",
        &["radiology.admin".into()],
        chrono::Duration::hours(1),
    )
    .unwrap();
    assert_eq!(app.get(BASE, &forged).await.status, StatusCode::UNAUTHORIZED);
    let expired = TokenKeys::new(JWT_SECRET.as_bytes())
        .mint(&Claims {
            tenant_id: app.tenant,
            sub: "late".into(),
            roles: vec!["radiology.admin".into()],
            exp: chrono::Utc::now().timestamp() - 600,
            iat: None,
        })
        .unwrap();
    let r = app.get(BASE, &expired).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["detail"].as_str().unwrap().contains("expired"));
    // A token whose tenant_id is not a UUID is refused too.
    let bad_claims = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"tenant_id": "hospital-a", "sub": "x", "roles": ["radiology.admin"], "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(app.get(BASE, &bad_claims).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_read_only_token_can_read_but_not_write() {
    let app = TestApp::spawn().await;
    let created = app.create_endpoint(&endpoint_body("node-r", "http://pacs/dicom-web", "u", "p")).await;
    let path = format!("{BASE}/{}", created["id"].as_str().unwrap());
    let reader = app.reader();
    assert_eq!(app.get(BASE, &reader).await.status, StatusCode::OK);
    assert_eq!(app.get(&path, &reader).await.status, StatusCode::OK);
    let body = endpoint_body("node-x", "http://pacs/dicom-web", "u", "p");
    assert_eq!(app.post(BASE, &reader, &body).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.patch(&path, &reader, &json!({"name": "hijack"})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.delete(&path, &reader).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get(&format!("{path}/test"), &reader).await.status, StatusCode::FORBIDDEN);
    let nobody = app.token_for(app.tenant, &["billing.read"]);
    assert_eq!(app.get(BASE, &nobody).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get(&path, &app.admin()).await.json()["name"], "PACS node-r", "nothing changed");
}

#[tokio::test]
async fn tenant_b_never_sees_or_touches_tenant_a_endpoints() {
    let app = TestApp::spawn().await;
    let created = app.create_endpoint(&endpoint_body("node-a", "http://pacs/dicom-web", "u", "p")).await;
    let path = format!("{BASE}/{}", created["id"].as_str().unwrap());
    let b = app.token_for(app.other_tenant, &["radiology.admin"]);
    assert_eq!(app.get(&path, &b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.patch(&path, &b, &json!({"name": "mine"})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&path, &b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("{path}/test"), &b).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(BASE, &b).await.json()["items"], json!([]));
    assert_eq!(app.get("/v1/radiology/imaging-studies", &b).await.json()["items"], json!([]));
    assert_eq!(app.get(&path, &app.admin()).await.json()["active"], true, "tenant A's row untouched");
}
