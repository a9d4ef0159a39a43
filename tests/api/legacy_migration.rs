//! The migration plan's section 5 SQL, verbatim, against a migrated PostgreSQL
//! database holding the legacy `radiology_pacs` tables; then the service serves the
//! migrated rows, with the legacy plain-text credentials sealed at start.

use radiology::db::Db;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{fresh_pg_database, pg_admin_url, step_names, Orthanc, TestApp};

/// The SQL of section 5 of the migration plan, copied byte for byte.
const SEED_SQL: &str = include_str!("../fixtures/seed-section-5.sql");

#[test]
fn the_fixture_is_the_seed_text_verbatim() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/radiology-service-migration-plan.txt");
    match std::fs::read_to_string(&seed) {
        Ok(text) => assert!(text.ends_with(SEED_SQL), "tests/fixtures/seed-section-5.sql differs from the seed's section 5"),
        Err(_) => eprintln!("seed document not beside the checkout; fixture comparison skipped"),
    }
}

const LEGACY_SCHEMA: &str = "
CREATE SCHEMA radiology_pacs;
CREATE TABLE radiology_pacs.pacs_endpoints (id uuid, tenant_id uuid, node_id text, name text,
  qido_url text, wado_url text, stow_url text, auth_mode text, config_json jsonb, created_at timestamptz);
CREATE TABLE radiology_pacs.imaging_studies (id uuid, tenant_id uuid, patient_id text, encounter_id text,
  order_id uuid, modality text, started_at timestamptz, pacs_study_uid text, pacs_endpoint_id uuid,
  payload_json jsonb, created_at timestamptz, updated_at timestamptz);
";

#[tokio::test]
async fn seed_sql_runs_verbatim_and_the_service_serves_the_migrated_rows() {
    let Some(admin) = pg_admin_url() else { return };
    let orthanc = Orthanc::from_env();
    let url = fresh_pg_database(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let config = radiology::config::Config { data_dir: dir.path().into(), ..TestApp::config_for(&url) };

    // 1. The service's schema exists (first start), and the legacy module's tables are filled.
    TestApp::spawn_with(config.clone()).await.stop().await;
    let db = Db::connect(&url, 2).await.unwrap();
    let Db::Postgres(pool) = &db else { unreachable!() };
    sqlx::raw_sql(LEGACY_SCHEMA).execute(pool).await.unwrap();
    let (tenant_a, tenant_b) = (Uuid::new_v4(), Uuid::new_v4());
    let (ep_a, ep_b) = (Uuid::new_v4(), Uuid::new_v4());
    let (qido, user, password) = match &orthanc {
        Some(o) => (o.dicomweb_url(), o.user.clone(), o.password.clone()),
        None => ("http://127.0.0.1:9/dicom-web".to_string(), "legacy".to_string(), "legacy-pw".to_string()),
    };
    sqlx::query("INSERT INTO radiology_pacs.pacs_endpoints VALUES ($1, $2, 'node-1', 'Legacy PACS', $3, $3, $3, 'basic', $4, '2023-03-01T08:00:00Z')")
        .bind(ep_a).bind(tenant_a).bind(&qido).bind(json!({"username": user, "password": password}))
        .execute(pool).await.unwrap();
    sqlx::query("INSERT INTO radiology_pacs.pacs_endpoints VALUES ($1, $2, 'node-9', 'Other tenant PACS', 'http://pacs-b/dicom-web', NULL, NULL, 'none', '{}', '2023-03-02T08:00:00Z')")
        .bind(ep_b).bind(tenant_b).execute(pool).await.unwrap();
    let studies = [
        (Uuid::new_v4(), tenant_a, "P-1", "1.2.840.99.1", ep_a, "CT"),
        (Uuid::new_v4(), tenant_a, "P-2", "1.2.840.99.2", ep_a, "MR"),
        (Uuid::new_v4(), tenant_b, "P-9", "1.2.840.99.9", ep_b, "US"),
    ];
    for (id, tenant, patient, uid, endpoint, modality) in studies {
        sqlx::query("INSERT INTO radiology_pacs.imaging_studies VALUES ($1, $2, $3, 'ENC-1', NULL, $4, '2023-05-01T10:15:00Z', $5, $6, $7, '2023-05-01T11:00:00Z', '2023-05-02T11:00:00Z')")
            .bind(id).bind(tenant).bind(patient).bind(modality).bind(uid).bind(endpoint)
            .bind(json!({"resourceType": "ImagingStudy", "identifier": [{"system": "urn:dicom:uid", "value": format!("urn:oid:{uid}")}]}))
            .execute(pool).await.unwrap();
    }

    // 2. The seed's SQL, verbatim.
    sqlx::raw_sql(SEED_SQL).execute(pool).await.expect("the migration plan's SQL runs against our schema");
    let counts: (i64, i64) = sqlx::query_as("SELECT (SELECT COUNT(*) FROM radiology.pacs_endpoints), (SELECT COUNT(*) FROM radiology.imaging_studies)")
        .fetch_one(pool).await.unwrap();
    assert_eq!(counts, (2, 3));

    // 3. The next start seals the copied plain-text credentials; the service serves the rows.
    let mut app = TestApp::spawn_with(config).await;
    app.tenant = tenant_a;
    let raw: (String,) = sqlx::query_as("SELECT auth_config::text FROM radiology.pacs_endpoints WHERE id = $1").bind(ep_a).fetch_one(pool).await.unwrap();
    assert!(!raw.0.contains(&password) && raw.0.contains("$sealed"), "sealed at start: {}", raw.0);

    let a = app.token_for(tenant_a, &["radiology.admin"]);
    let endpoint = app.get(&format!("/v1/radiology/pacs-endpoints/{ep_a}"), &a).await;
    assert_eq!(endpoint.status, StatusCode::OK);
    let endpoint = endpoint.json();
    assert_eq!(endpoint["node_id"], "node-1");
    assert_eq!(endpoint["active"], true);
    assert_eq!(endpoint["auth_config"], json!({"username": user, "password": "***"}));
    assert_eq!(endpoint["created_at"], "2023-03-01T08:00:00Z");

    let listed = app.get("/v1/radiology/imaging-studies", &a).await.json();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "tenant A's two studies");
    assert!(items.iter().all(|s| s["status"] == "registered" && s["version"] == 1 && s["pacs_endpoint_id"] == json!(ep_a)));
    let by_uid = app.get("/v1/radiology/imaging-studies?study_instance_uid=1.2.840.99.2", &a).await.json();
    assert_eq!(by_uid["items"][0]["patient_id"], "P-2");
    assert_eq!(by_uid["items"][0]["modality"], "MR");
    assert_eq!(by_uid["items"][0]["encounter_id"], "ENC-1");
    assert_eq!(by_uid["items"][0]["fhir"]["resourceType"], "ImagingStudy");
    let study_b = studies[2].0;
    assert_eq!(app.get(&format!("/v1/radiology/imaging-studies/{study_b}"), &a).await.status, StatusCode::NOT_FOUND);
    let b = app.token_for(tenant_b, &["radiology.read"]);
    assert_eq!(app.get(&format!("/v1/radiology/imaging-studies/{study_b}"), &b).await.json()["patient_id"], "P-9");

    // 4. The migrated credentials still open: the endpoint passes its test against Orthanc.
    if orthanc.is_some() {
        let report = app.test_endpoint(&ep_a.to_string(), None).await;
        assert_eq!(report["ok"], true, "{report:#}");
        assert_eq!(step_names(&report), ["dns", "tcp", "http", "auth", "qido"]);
    }
    let b_admin = app.token_for(tenant_b, &["radiology.admin"]);
    assert_eq!(app.get(&format!("/v1/radiology/pacs-endpoints/{ep_a}"), &b_admin).await.status, StatusCode::NOT_FOUND);
    db.close().await;
}
