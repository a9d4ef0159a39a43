//! The connectivity test against a real Orthanc with its DICOMweb plugin and HTTP
//! basic authentication (started by scripts/test).

use serde_json::json;

use crate::helpers::{endpoint_body, failed_step, step_names, Orthanc, TestApp};

fn unique_patient() -> String {
    format!("PT-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[tokio::test]
async fn a_registered_orthanc_passes_and_lists_the_test_patients_studies() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let app = TestApp::spawn().await;
    let patient = unique_patient();
    let mut uids = vec![
        orthanc.create_study(&patient, "ACC-1", "20240105", "CT", "CT HEAD W/O CONTRAST").await,
        orthanc.create_study(&patient, "ACC-2", "20240212", "MR", "MR BRAIN").await,
        orthanc.create_study(&patient, "ACC-3", "20240301", "CR", "CHEST 2 VIEWS").await,
    ];
    orthanc.create_study(&unique_patient(), "ACC-OTHER", "20240101", "CT", "someone else").await;

    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    let id = endpoint["id"].as_str().unwrap();
    let report = app.test_endpoint(id, Some(&patient)).await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(step_names(&report), ["dns", "tcp", "http", "auth", "qido", "patient_query"]);
    assert_eq!(report["endpoint_id"], id);
    let mut found: Vec<String> =
        report["studies"].as_array().unwrap().iter().map(|s| s["study_instance_uid"].as_str().unwrap().to_string()).collect();
    found.sort();
    uids.sort();
    assert_eq!(found, uids, "exactly the patient's studies");
    let mr = report["studies"].as_array().unwrap().iter().find(|s| s["accession_number"] == "ACC-2").unwrap();
    assert_eq!(mr["study_date"], "20240212");
    assert_eq!(mr["modalities"], json!(["MR"]));
    assert_eq!(mr["description"], "MR BRAIN");
    assert_eq!(mr["number_of_series"], 1);
    assert_eq!(mr["number_of_instances"], 1);

    let stored = app.get(&format!("/v1/radiology/pacs-endpoints/{id}"), &app.reader()).await.json();
    assert_eq!(stored["last_test"], report, "the last result is shown on the endpoint");
}

#[tokio::test]
async fn a_wrong_password_fails_at_auth_and_stops_there() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let app = TestApp::spawn().await;
    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, "wrong-password")).await;
    let report = app.test_endpoint(endpoint["id"].as_str().unwrap(), Some("anyone")).await;
    assert_eq!(report["ok"], false);
    assert_eq!(step_names(&report), ["dns", "tcp", "http", "auth"], "later steps are not run");
    let (step, detail) = failed_step(&report);
    assert_eq!(step, "auth");
    assert!(detail.contains("401") && detail.contains("credentials were rejected"), "{detail}");
}

#[tokio::test]
async fn auth_mode_none_against_a_protected_pacs_fails_at_auth_with_a_hint() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let app = TestApp::spawn().await;
    let endpoint = app
        .create_endpoint(&json!({"name": "open", "node_id": "n", "qido_url": orthanc.dicomweb_url(), "auth_mode": "none"}))
        .await;
    let (step, detail) = failed_step(&app.test_endpoint(endpoint["id"].as_str().unwrap(), None).await);
    assert_eq!(step, "auth");
    assert!(detail.contains("auth_mode is none"), "{detail}");
}

#[tokio::test]
async fn a_closed_port_fails_at_tcp() {
    let app = TestApp::spawn().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = app.create_endpoint(&endpoint_body("closed", &format!("http://127.0.0.1:{port}/dicom-web"), "u", "p")).await;
    let report = app.test_endpoint(endpoint["id"].as_str().unwrap(), None).await;
    assert_eq!(step_names(&report), ["dns", "tcp"]);
    let (step, detail) = failed_step(&report);
    assert_eq!(step, "tcp");
    assert!(detail.contains("connection refused"), "{detail}");
}

#[tokio::test]
async fn a_non_dicomweb_url_fails_at_qido() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let app = TestApp::spawn().await;
    // Orthanc's own REST root: its /studies is not QIDO-RS (it refuses `limit` without `since`).
    let endpoint = app.create_endpoint(&endpoint_body("rest", &orthanc.url, &orthanc.user, &orthanc.password)).await;
    let report = app.test_endpoint(endpoint["id"].as_str().unwrap(), None).await;
    let (step, detail) = failed_step(&report);
    assert_eq!(step, "qido", "{report:#}");
    assert!(detail.contains("HTTP 400") && detail.contains("check qido_url"), "{detail}");
    assert_eq!(report["steps"][3]["detail"], "credentials accepted (HTTP 400)", "auth itself passed");
    // A path that does not exist at all also fails at qido, with a hint.
    let endpoint = app
        .create_endpoint(&endpoint_body("typo", &format!("{}/dicomweb-typo", orthanc.url), &orthanc.user, &orthanc.password))
        .await;
    let (step, detail) = failed_step(&app.test_endpoint(endpoint["id"].as_str().unwrap(), None).await);
    assert_eq!(step, "qido");
    assert!(detail.contains("404") && detail.contains("check qido_url"), "{detail}");
}

#[tokio::test]
async fn https_to_a_plain_http_port_fails_at_tls() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let app = TestApp::spawn().await;
    let https = orthanc.dicomweb_url().replacen("http://", "https://", 1);
    let endpoint = app.create_endpoint(&endpoint_body("tls", &https, &orthanc.user, &orthanc.password)).await;
    let report = app.test_endpoint(endpoint["id"].as_str().unwrap(), None).await;
    assert_eq!(step_names(&report), ["dns", "tcp", "tls"]);
    let (step, detail) = failed_step(&report);
    assert_eq!(step, "tls");
    assert!(detail.contains("TLS handshake"), "{detail}");
}

#[tokio::test]
async fn a_patient_without_studies_fails_at_patient_query() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let app = TestApp::spawn().await;
    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    let report = app.test_endpoint(endpoint["id"].as_str().unwrap(), Some(&unique_patient())).await;
    let (step, detail) = failed_step(&report);
    assert_eq!(step, "patient_query");
    assert!(detail.contains("no studies"), "{detail}");
}

#[tokio::test]
async fn an_unresolvable_host_fails_at_dns() {
    let app = TestApp::spawn().await;
    let mut body = endpoint_body("dns", "http://pacs.does-not-exist.invalid/dicom-web", "u", "p");
    body["timeout_ms"] = json!(3000);
    let endpoint = app.create_endpoint(&body).await;
    let report = app.test_endpoint(endpoint["id"].as_str().unwrap(), None).await;
    assert_eq!(step_names(&report), ["dns"]);
    assert!(failed_step(&report).1.contains("pacs.does-not-exist.invalid"));
}
