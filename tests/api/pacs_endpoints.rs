//! Registration, listing, change and deactivation of PACS endpoints.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{endpoint_body, TestApp};

const BASE: &str = "/v1/radiology/pacs-endpoints";

#[tokio::test]
async fn register_returns_201_with_location_and_the_endpoint_reads_back() {
    let app = TestApp::spawn().await;
    let facility = uuid::Uuid::new_v4();
    let mut body = endpoint_body("node-a", "https://pacs.example.org/dicom-web/", "svc", "pw");
    body["facility_id"] = json!(facility);
    body["wado_url"] = json!("https://pacs.example.org/dicom-web");
    body["timeout_ms"] = json!(2500);
    let r = app.post(BASE, &app.admin(), &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created = r.json();
    let id = created["id"].as_str().unwrap();
    assert_eq!(r.header("location"), Some(format!("{BASE}/{id}").as_str()));
    assert_eq!(created["qido_url"], "https://pacs.example.org/dicom-web", "trailing slash normalized");
    assert_eq!(created["timeout_ms"], 2500);
    assert_eq!(created["active"], true);
    assert_eq!(created["facility_id"], json!(facility));
    assert_eq!(created["auth_config"], json!({"username": "svc", "password": "***"}));

    let read = app.get(&format!("{BASE}/{id}"), &app.reader()).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json(), created);
}

#[tokio::test]
async fn invalid_body_is_422_naming_every_bad_field_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let body = json!({
        "name": "x", "node_id": "n", "qido_url": "ftp://pacs/dicom-web", "stow_url": "relative/path",
        "auth_mode": "oauth2_client_credentials", "auth_config": {"token_url": "not a url", "client_id": "c"},
        "timeout_ms": -1, "colour": "blue"
    });
    let r = app.post(BASE, &app.admin(), &body).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let problem = r.json();
    let fields: Vec<&str> = problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    for f in ["qido_url", "stow_url", "auth_config.token_url", "auth_config.client_secret", "timeout_ms", "colour"] {
        assert!(fields.contains(&f), "{f} not named in {fields:?}");
    }
    let list = app.get(BASE, &app.admin()).await.json();
    assert_eq!(list["items"], json!([]), "nothing stored");
}

#[tokio::test]
async fn malformed_json_is_400_and_wrong_media_type_is_415() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .post(format!("{}{BASE}", app.base))
        .bearer_auth(app.admin())
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app.client.post(format!("{}{BASE}", app.base)).bearer_auth(app.admin()).body("name=x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_second_active_endpoint_on_one_node_is_409_until_the_first_is_deactivated() {
    let app = TestApp::spawn().await;
    let first = app.create_endpoint(&endpoint_body("node-1", "http://pacs-a/dicom-web", "u", "p")).await;
    let r = app.post(BASE, &app.admin(), &endpoint_body("node-1", "http://pacs-b/dicom-web", "u", "p")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    // Another tenant may use the same node id.
    let other = app.token_for(app.other_tenant, &["radiology.admin"]);
    assert_eq!(app.post(BASE, &other, &endpoint_body("node-1", "http://pacs-c/dicom-web", "u", "p")).await.status, StatusCode::CREATED);
    // Deactivating the first frees the node.
    let id = first["id"].as_str().unwrap();
    assert_eq!(app.delete(&format!("{BASE}/{id}"), &app.admin()).await.status, StatusCode::NO_CONTENT);
    let r = app.post(BASE, &app.admin(), &endpoint_body("node-1", "http://pacs-b/dicom-web", "u", "p")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Reactivating the old one would make two: 409.
    let r = app.patch(&format!("{BASE}/{id}"), &app.admin(), &json!({"active": true})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
}

#[tokio::test]
async fn list_filters_by_facility_node_and_active_and_pages_without_gaps() {
    let app = TestApp::spawn().await;
    let facility = uuid::Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut body = endpoint_body(&format!("node-{i}"), "http://pacs/dicom-web", "u", "p");
        if i % 2 == 0 {
            body["facility_id"] = json!(facility);
        }
        ids.push(app.create_endpoint(&body).await["id"].as_str().unwrap().to_string());
    }
    app.delete(&format!("{BASE}/{}", ids[0]), &app.admin()).await;

    let by_facility = app.get(&format!("{BASE}?facility_id={facility}&limit=100"), &app.reader()).await.json();
    assert_eq!(by_facility["items"].as_array().unwrap().len(), 4);
    let active_in_facility = app.get(&format!("{BASE}?facility_id={facility}&active=true"), &app.reader()).await.json();
    assert_eq!(active_in_facility["items"].as_array().unwrap().len(), 3);
    let node = app.get(&format!("{BASE}?node_id=node-3"), &app.reader()).await.json();
    assert_eq!(node["items"][0]["id"], json!(ids[3]));

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{BASE}?limit=3&cursor={c}"),
            None => format!("{BASE}?limit=3"),
        };
        let page = app.get(&path, &app.reader()).await.json();
        seen.extend(page["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every endpoint exactly once, in creation order");

    let bad = app.get(&format!("{BASE}?active=maybe&limit=0&cursor=zzz&sort=name"), &app.reader()).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<String> = bad.json()["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_string()).collect();
    assert_eq!(fields.len(), 4, "{fields:?}");
}

#[tokio::test]
async fn patch_changes_fields_keeps_redacted_secrets_and_validates() {
    let app = TestApp::spawn().await;
    let created = app.create_endpoint(&endpoint_body("node-p", "http://pacs/dicom-web", "svc", "pw-1")).await;
    let path = format!("{BASE}/{}", created["id"].as_str().unwrap());

    // Sending back what GET showed ("***") keeps the stored password.
    let mut shown = created.clone();
    let obj = shown.as_object_mut().unwrap();
    for k in ["id", "created_at", "updated_at", "last_test"] {
        obj.remove(k);
    }
    obj.insert("name".into(), json!("Renamed"));
    let r = app.patch(&path, &app.admin(), &shown).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["name"], "Renamed");
    let stored: (String,) = stored_auth_config(&app, created["id"].as_str().unwrap()).await;
    assert!(stored.0.contains("$sealed"), "password still sealed: {}", stored.0);

    let r = app.patch(&path, &app.admin(), &json!({"auth_mode": "bearer"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app.patch(&path, &app.admin(), &json!({"auth_mode": "bearer", "auth_config": {"token": "t-1"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["auth_config"], json!({"token": "***"}));
    let r = app.patch(&path, &app.admin(), &json!({"id": "x", "qido_url": null})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.get(&path, &app.admin()).await.json()["auth_mode"], "bearer", "a rejected patch changes nothing");
}

async fn stored_auth_config(app: &TestApp, id: &str) -> (String,) {
    let id = uuid::Uuid::parse_str(id).unwrap();
    radiology::on_db!(&app.db, pool => sqlx::query_as::<_, (String,)>(
        "SELECT CAST(auth_config AS TEXT) FROM pacs_endpoints WHERE id = $1").bind(id).fetch_one(pool).await).unwrap()
}

#[tokio::test]
async fn delete_deactivates_and_purge_refuses_an_endpoint_studies_reference() {
    let app = TestApp::spawn().await;
    let kept = app.create_endpoint(&endpoint_body("node-k", "http://pacs/dicom-web", "u", "p")).await;
    let gone = app.create_endpoint(&endpoint_body("node-g", "http://pacs/dicom-web", "u", "p")).await;
    let kept_id = kept["id"].as_str().unwrap();
    let gone_id = gone["id"].as_str().unwrap();

    assert_eq!(app.delete(&format!("{BASE}/{kept_id}"), &app.admin()).await.status, StatusCode::NO_CONTENT);
    let read = app.get(&format!("{BASE}/{kept_id}"), &app.admin()).await.json();
    assert_eq!(read["active"], false, "deactivated, not deleted");

    // A study references `kept`: purge is refused; `gone` has none: purge deletes it.
    let now = radiology::db::now();
    let study = radiology::studies::StudyRow {
        id: uuid::Uuid::new_v4(), tenant_id: app.tenant, patient_id: Some("P1".into()), encounter_id: None, order_id: None,
        accession_number: None, modality: Some("CT".into()), started_at: None, status: "available".into(),
        pacs_study_uid: "1.2.3.4".into(), pacs_endpoint_id: Some(uuid::Uuid::parse_str(kept_id).unwrap()), description: None,
        number_of_series: None, number_of_instances: None, payload: None, version: 1, created_at: now, updated_at: now,
    };
    use radiology::studies::StudyStore;
    radiology::studies::SqlStudyStore::new(app.db.clone()).insert(radiology::auth::TenantId(app.tenant), &study).await.unwrap();
    let r = app.delete(&format!("{BASE}/{kept_id}?purge=true"), &app.admin()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(app.delete(&format!("{BASE}/{gone_id}?purge=true"), &app.admin()).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("{BASE}/{gone_id}"), &app.admin()).await.status, StatusCode::NOT_FOUND);
}
