//! The FHIR R4 facade: CapabilityStatement, ImagingStudy read/vread/search, paging,
//! errors as OperationOutcome, and every emitted resource checked by an independent
//! validator (PyPI fhir.resources).

use std::collections::HashSet;

use radiology::auth::TenantId;
use radiology::pacs::dicom_json::DicomObject;
use radiology::studies::mapping::map_study;
use radiology::studies::store::UpsertOutcome;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{endpoint_body, validate_fhir, Orthanc, TestApp};

/// Stores a study as sync would, from DICOM JSON through the real mapping.
#[allow(clippy::too_many_arguments)]
async fn put_study(app: &TestApp, tenant: Uuid, uid: &str, patient: &str, accession: &str, date: &str, modality: &str, tag: Option<&str>) -> Uuid {
    let dicom = DicomObject::from_value(json!({
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": [patient]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080050": {"vr": "SH", "Value": [accession]},
        "00080020": {"vr": "DA", "Value": [date]},
        "00080030": {"vr": "TM", "Value": ["120000"]},
        "00080061": {"vr": "CS", "Value": [modality]},
        "00201206": {"vr": "IS", "Value": [1]},
        "00201208": {"vr": "IS", "Value": [10]}
    }))
    .unwrap();
    let m = map_study(&dicom, Some("http://pacs.example/dicom-web"), chrono::FixedOffset::east_opt(0).unwrap()).unwrap();
    let mut upsert = m;
    if let Some(code) = tag {
        upsert.payload["meta"] = json!({"tag": [{"system": "urn:test:tags", "code": code}]});
    }
    match app.state.studies.upsert(TenantId(tenant), &upsert).await.unwrap() {
        UpsertOutcome::Created(id) | UpsertOutcome::Updated(id) | UpsertOutcome::Unchanged(id) => id,
    }
}

async fn fhir(app: &TestApp, path: &str) -> crate::helpers::Response {
    app.request(Method::GET, &format!("/fhir/r4{path}"), Some(&app.reader()), None).await
}

#[tokio::test]
async fn metadata_is_a_valid_capability_statement_listing_what_is_supported() {
    let app = TestApp::spawn().await;
    let r = app.request(Method::GET, "/fhir/r4/metadata", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("application/fhir+json"));
    let cs = r.json();
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let study = &cs["rest"][0]["resource"][0];
    assert_eq!(study["type"], "ImagingStudy");
    let params: HashSet<&str> = study["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["patient", "identifier", "modality", "started", "status", "_tag", "_lastUpdated"] {
        assert!(params.contains(p), "{p}");
    }
    validate_fhir(&[cs]);
}

#[tokio::test]
async fn read_and_vread_with_etag_last_modified_and_history() {
    let app = TestApp::spawn().await;
    let id = put_study(&app, app.tenant, "1.2.826.0.1.1", "P-1", "ACC-1", "20240105", "CT", None).await;
    let r = fhir(&app, &format!("/ImagingStudy/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.header("content-type").unwrap().starts_with("application/fhir+json"));
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r.header("last-modified").unwrap().ends_with("GMT"));
    let v1 = r.json();
    assert_eq!(v1["id"], id.to_string());
    assert_eq!(v1["meta"]["versionId"], "1");
    assert_eq!(v1["identifier"][0]["value"], "urn:oid:1.2.826.0.1.1");
    assert_eq!(v1["subject"]["identifier"]["value"], "P-1");
    assert_eq!(v1["started"], "2024-01-05T12:00:00+00:00");

    // A change on the PACS makes version 2; version 1 stays readable.
    let dicom_change = put_study(&app, app.tenant, "1.2.826.0.1.1", "P-1", "ACC-1", "20240105", "MR", None).await;
    assert_eq!(dicom_change, id);
    let current = fhir(&app, &format!("/ImagingStudy/{id}")).await;
    assert_eq!(current.header("etag"), Some("W/\"2\""));
    let v2 = current.json();
    assert_eq!(v2["modality"][0]["code"], "MR");
    let old = fhir(&app, &format!("/ImagingStudy/{id}/_history/1")).await;
    assert_eq!(old.status, StatusCode::OK);
    assert_eq!(old.json()["modality"][0]["code"], "CT");
    assert_eq!(old.json()["meta"]["versionId"], "1");
    assert_eq!(fhir(&app, &format!("/ImagingStudy/{id}/_history/2")).await.json(), v2);
    let missing = fhir(&app, &format!("/ImagingStudy/{id}/_history/3")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["resourceType"], "OperationOutcome");
    validate_fhir(&[v1, v2, old.json(), missing.json()]);
}

#[tokio::test]
async fn errors_are_operation_outcomes_and_tenants_are_isolated() {
    let app = TestApp::spawn().await;
    let id = put_study(&app, app.tenant, "1.2.826.0.1.2", "P-2", "ACC-2", "20240105", "CT", None).await;
    let r = app.request(Method::GET, &format!("/fhir/r4/ImagingStudy/{id}"), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["issue"][0]["code"], "login");
    let other = app.token_for(app.other_tenant, &["radiology.read"]);
    let r = app.request(Method::GET, &format!("/fhir/r4/ImagingStudy/{id}"), Some(&other), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.request(Method::GET, "/fhir/r4/ImagingStudy?patient=P-2", Some(&other), None).await;
    assert_eq!(r.json()["total"], 0);
    let nobody = app.token_for(app.tenant, &["billing.read"]);
    assert_eq!(app.request(Method::GET, "/fhir/r4/ImagingStudy", Some(&nobody), None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(fhir(&app, "/ImagingStudy/not-a-uuid").await.status, StatusCode::NOT_FOUND);

    let r = fhir(&app, "/ImagingStudy?bodysite=head&status=available").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let oo = r.json();
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("bodysite"));
    let r = fhir(&app, "/ImagingStudy?started=yesterday&status=done").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["issue"].as_array().unwrap().len(), 2);
    let lenient = app
        .client
        .get(format!("{}/fhir/r4/ImagingStudy?bodysite=head", app.base))
        .bearer_auth(app.reader())
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(lenient.status(), StatusCode::OK);
    let bundle: Value = lenient.json().await.unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().last().unwrap()["search"]["mode"], "outcome");
    validate_fhir(&[oo, bundle]);
}

#[tokio::test]
async fn search_parameters_filter_as_fhir_defines_them() {
    let app = TestApp::spawn().await;
    put_study(&app, app.tenant, "1.2.826.0.2.1", "P-A", "ACC-A1", "20230115", "CT", None).await;
    put_study(&app, app.tenant, "1.2.826.0.2.2", "P-A", "ACC-A2", "20240220", "MR", Some("historical")).await;
    put_study(&app, app.tenant, "1.2.826.0.2.3", "P-B", "ACC-B1", "20240301", "CT", None).await;
    let ids = |b: &Value| -> Vec<String> {
        b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["identifier"][0]["value"].as_str().unwrap().trim_start_matches("urn:oid:").to_string()).collect()
    };
    let search = |q: &str| {
        let q = q.to_string();
        let app = &app;
        async move {
            let r = fhir(app, &format!("/ImagingStudy?{q}")).await;
            assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.text);
            r.json()
        }
    };
    let mut bundles = Vec::new();
    for (q, expected) in [
        ("patient=P-A", vec!["1.2.826.0.2.1", "1.2.826.0.2.2"]),
        ("patient=Patient/P-B", vec!["1.2.826.0.2.3"]),
        ("identifier=urn:dicom:uid|urn:oid:1.2.826.0.2.2", vec!["1.2.826.0.2.2"]),
        ("identifier=ACC-B1", vec!["1.2.826.0.2.3"]),
        ("modality=http://dicom.nema.org/resources/ontology/DCM|CT", vec!["1.2.826.0.2.1", "1.2.826.0.2.3"]),
        ("modality=MR", vec!["1.2.826.0.2.2"]),
        ("started=ge2024-01-01", vec!["1.2.826.0.2.2", "1.2.826.0.2.3"]),
        ("started=lt2024-02-20", vec!["1.2.826.0.2.1"]),
        ("started=2024-02", vec!["1.2.826.0.2.2"]),
        ("started=ge2024-01-01&started=le2024-02-29", vec!["1.2.826.0.2.2"]),
        ("_tag=historical", vec!["1.2.826.0.2.2"]),
        ("_tag=urn:test:tags|historical", vec!["1.2.826.0.2.2"]),
        ("_tag=urn:other|historical", vec![]),
        ("status=available,cancelled&patient=P-B", vec!["1.2.826.0.2.3"]),
        ("status=cancelled", vec![]),
        ("_lastUpdated=ge2020-01-01", vec!["1.2.826.0.2.1", "1.2.826.0.2.2", "1.2.826.0.2.3"]),
        ("_lastUpdated=lt2020-01-01", vec![]),
    ] {
        let b = search(q).await;
        let mut got = ids(&b);
        got.sort();
        assert_eq!(got, expected, "{q}");
        assert_eq!(b["total"], expected.len(), "{q}");
        bundles.push(b);
    }
    validate_fhir(&bundles);

    // The REST index takes the same filters.
    let rest = app.get("/v1/radiology/imaging-studies?modality=CT&started_from=2024-01-01&started_to=2024-03-01", &app.reader()).await.json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["study_instance_uid"], "1.2.826.0.2.3");
    let rest = app.get("/v1/radiology/imaging-studies?tag=historical", &app.reader()).await.json();
    assert_eq!(rest["items"][0]["study_instance_uid"], "1.2.826.0.2.2");
    let bad = app.get("/v1/radiology/imaging-studies?started_from=last-week&modalities=CT", &app.reader()).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json()["errors"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn search_paging_visits_every_study_exactly_once() {
    let app = TestApp::spawn().await;
    let mut expected = HashSet::new();
    for i in 0..23 {
        expected.insert(put_study(&app, app.tenant, &format!("1.2.826.0.3.{}", i + 1), "P-PAGE", &format!("A{i}"), "20240105", "CT", None).await.to_string());
    }
    put_study(&app, app.other_tenant, "1.2.826.0.3.99", "P-PAGE", "X", "20240105", "CT", None).await;
    let mut seen = Vec::new();
    let mut url = format!("{}/fhir/r4/ImagingStudy?patient=P-PAGE&_count=5", app.base);
    let mut pages = Vec::new();
    loop {
        let bundle: Value = app.client.get(&url).bearer_auth(app.reader()).send().await.unwrap().json().await.unwrap();
        assert_eq!(bundle["type"], "searchset");
        assert_eq!(bundle["total"], 23);
        let links = bundle["link"].as_array().unwrap();
        assert!(links.iter().any(|l| l["relation"] == "self"));
        for e in bundle["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_string());
            assert!(e["fullUrl"].as_str().unwrap().ends_with(e["resource"]["id"].as_str().unwrap()));
        }
        let next = links.iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_string());
        pages.push(bundle);
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(pages.len(), 5);
    assert_eq!(seen.len(), 23, "no study twice");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);
    validate_fhir(&pages);
}

/// Studies synced from the real Orthanc come out of the facade as valid FHIR.
#[tokio::test]
async fn synced_studies_validate_as_fhir() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let patient = format!("FHIR-{}", &Uuid::new_v4().simple().to_string()[..8]);
    orthanc.create_study(&patient, "F-1", "20240105", "CT", "CT HEAD").await;
    orthanc.create_study(&patient, "F-2", "20240212", "MR", "MR KNEE").await;
    let (url, dir) = crate::helpers::fresh_database().await;
    let config = radiology::config::Config { data_dir: dir.path().into(), sync_backfill_since: "2024-01-01".into(), ..TestApp::config_for(&url) };
    let app = TestApp::spawn_with(config).await;
    app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    app.state.sync.run_until_idle().await.unwrap();
    let bundle = fhir(&app, &format!("/ImagingStudy?patient={patient}")).await.json();
    assert_eq!(bundle["total"], 2);
    let knee = bundle["entry"].as_array().unwrap().iter().find(|e| e["resource"]["description"] == "MR KNEE").unwrap();
    assert_eq!(knee["resource"]["contained"][0]["address"], orthanc.dicomweb_url());
    let mut all = vec![bundle.clone()];
    all.extend(bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()));
    validate_fhir(&all);
}
