//! QIDO-RS study sync against the real Orthanc: completeness without duplicates,
//! incremental polls, changes, a kill -9 mid-sync, two processes on one database,
//! degraded endpoints, and malformed items.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use futures_util::StreamExt;
use radiology::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{endpoint_body, fresh_database, Orthanc, TestApp};

fn patient() -> String {
    format!("SYNC-{}", &Uuid::new_v4().simple().to_string()[..10])
}

/// `n` studies for `patient`, one every `step_days` days back from 2025-06-30. Each call
/// picks its own second of the minute, so studies of different calls (and of earlier
/// runs against a long-lived Orthanc) rarely share a date and time: more studies in one
/// second than a QIDO result cap cannot be split by any query.
async fn seed(orthanc: &Orthanc, patient: &str, n: usize, step_days: u64) -> HashSet<String> {
    let start = chrono::NaiveDate::from_ymd_opt(2025, 6, 30).unwrap();
    let second = Uuid::new_v4().as_u128() % 60;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let date = (start - Days::new(i as u64 * step_days)).format("%Y%m%d").to_string();
            let time = format!("{:02}{:02}{second:02}", 7 + i % 12, (i * 7) % 60);
            async move { orthanc.create_study_at(patient, &format!("ACC-{i}"), &date, &time, ["CT", "MR", "US"][i % 3], &format!("STUDY {i}")).await }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

async fn stored_uids(app: &TestApp, tenant: Uuid) -> Vec<String> {
    radiology::on_db!(&app.db, pool => sqlx::query_scalar::<_, String>(
        "SELECT pacs_study_uid FROM imaging_studies WHERE tenant_id = $1").bind(tenant).fetch_all(pool).await).unwrap()
}

async fn app_with(config: impl FnOnce(&mut Config)) -> (TestApp, tempfile::TempDir, Config) {
    let (url, dir) = fresh_database().await;
    let mut c = Config { data_dir: dir.path().into(), ..TestApp::config_for(&url) };
    config(&mut c);
    (TestApp::spawn_with(c.clone()).await, dir, c)
}

async fn sync_status(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("/v1/radiology/pacs-endpoints/{id}/sync"), &app.reader()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json()
}

#[tokio::test]
async fn a_full_sync_stores_every_study_once_across_many_dates_and_a_second_run_rewrites_nothing() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let p = patient();
    let ours = seed(&orthanc, &p, 300, 3).await;
    let on_pacs = orthanc.all_study_uids().await;
    // A small result cap and page size force window splits and paging.
    let (app, _dir, _) = app_with(|c| {
        c.sync_max_results = 25;
        c.sync_page_size = 10;
        c.sync_backfill_since = "2015-01-01".into();
    })
    .await;
    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    let id = endpoint["id"].as_str().unwrap().to_string();
    assert_eq!(sync_status(&app, &id).await["state"], "pending");

    let reports = app.state.sync.run_until_idle().await.unwrap();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert!(report.ok && report.failed == 0, "{report:?}");
    assert!(report.windows > 10, "the cap split the history into many windows: {report:?}");

    let stored = stored_uids(&app, app.tenant).await;
    let distinct: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), distinct.len(), "no study stored twice");
    let missing: Vec<_> = on_pacs.difference(&distinct).collect();
    assert!(missing.is_empty(), "{} studies on the PACS were not synced: {missing:?}", missing.len());
    assert_eq!(report.created as usize, stored.len(), "created counts what was stored");

    // The REST index pages through the patient's 300 studies.
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app.get(&format!("/v1/radiology/imaging-studies?patient_id={p}&limit=120{cursor}"), &app.reader()).await.json();
        listed.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let listed_uids: HashSet<String> = listed.iter().map(|s| s["study_instance_uid"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed_uids, ours);
    assert!(listed.iter().all(|s| s["status"] == "available" && s["version"] == 1 && s["pacs_endpoint_id"] == json!(id)));
    let s = listed.iter().find(|s| s["accession_number"] == "ACC-4").unwrap();
    assert_eq!(s["modality"], "MR");
    assert!(s["started_at"].as_str().unwrap().starts_with("2025-06-18T11:28:"), "{}", s["started_at"]);
    assert_eq!(s["description"], "STUDY 4");
    assert_eq!(s["fhir"]["identifier"][0]["value"], format!("urn:oid:{}", s["study_instance_uid"].as_str().unwrap()));

    let metrics = app.request(reqwest::Method::GET, "/metrics", None, None).await.text;
    assert!(metrics.contains("radiology_sync_runs_total{result=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains(&format!("radiology_sync_studies_total{{outcome=\"created\"}} {}", report.created)), "{metrics}");

    let status = sync_status(&app, &id).await;
    assert_eq!(status["state"], "idle");
    assert_eq!(status["phase"], "incremental");
    assert!(status["watermark"].is_string());
    assert_eq!(status["counts"]["created"], json!(report.created));
    assert_eq!(status["last_run"]["seen"], json!(report.seen));

    // A full re-backfill rewrites nothing unchanged. (Other tests share this Orthanc, so
    // studies they add meanwhile are legitimately created; ours must stay at version 1.)
    let r = app.post(&format!("/v1/radiology/pacs-endpoints/{id}/sync?full=true"), &app.admin(), &json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let again = app.state.sync.run_until_idle().await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].phase, radiology::studies::sync::Phase::Backfill);
    let after: HashSet<String> = stored_uids(&app, app.tenant).await.into_iter().collect();
    let new: HashSet<&String> = after.difference(&distinct).collect();
    assert_eq!(again[0].created as usize, new.len(), "{:?}", again[0]);
    assert!(new.iter().all(|uid| !on_pacs.contains(*uid)), "only studies added since the first run are created");
    let ours_after = app.get(&format!("/v1/radiology/imaging-studies?patient_id={p}&limit=500"), &app.reader()).await.json();
    assert!(ours_after["items"].as_array().unwrap().iter().all(|s| s["version"] == 1), "unchanged studies are not rewritten");
}

#[tokio::test]
async fn an_incremental_poll_picks_up_a_new_study_and_a_changed_one_bumps_its_version() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let p = patient();
    let today = Utc::now().date_naive().format("%Y%m%d").to_string();
    let changing = orthanc.create_study_at(&p, "ACC-CHG", &today, "093000", "CT", "CT ABDOMEN").await;
    let (app, _dir, _) = app_with(|c| c.sync_backfill_since = "2024-01-01".into()).await;
    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    let id = endpoint["id"].as_str().unwrap().to_string();
    app.state.sync.run_until_idle().await.unwrap();
    let before = app.get(&format!("/v1/radiology/imaging-studies?study_instance_uid={changing}"), &app.reader()).await.json();
    assert_eq!(before["items"][0]["number_of_series"], 1);

    // Nothing is due before the interval; a new study and a new series then appear.
    assert!(app.state.sync.run_until_idle().await.unwrap().is_empty(), "not due yet");
    let added = orthanc.create_study(&p, "ACC-NEW", &today, "US", "US LIVER").await;
    orthanc.add_series(&changing, &p, "ACC-CHG", &today, "093000", "CT", "CT ABDOMEN").await;
    let r = app.post(&format!("/v1/radiology/pacs-endpoints/{id}/sync"), &app.admin(), &json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let reports = app.state.sync.run_until_idle().await.unwrap();
    assert_eq!(reports[0].phase, radiology::studies::sync::Phase::Incremental);
    assert_eq!((reports[0].created, reports[0].updated), (1, 1), "{:?}", reports[0]);

    let new = app.get(&format!("/v1/radiology/imaging-studies?study_instance_uid={added}"), &app.reader()).await.json();
    assert_eq!(new["items"][0]["version"], 1);
    let changed = app.get(&format!("/v1/radiology/imaging-studies?study_instance_uid={changing}"), &app.reader()).await.json();
    let changed = &changed["items"][0];
    assert_eq!(changed["version"], 2);
    assert_eq!(changed["number_of_series"], 2);
    assert_eq!(changed["fhir"]["numberOfSeries"], 2);
    let study_id = Uuid::parse_str(changed["id"].as_str().unwrap()).unwrap();
    let tenant = radiology::auth::TenantId(app.tenant);
    let v1 = app.state.studies.get_version(tenant, study_id, 1).await.unwrap();
    let v2 = app.state.studies.get_version(tenant, study_id, 2).await.unwrap();
    assert_eq!(v1.payload.unwrap().0["numberOfSeries"], 1, "version 1 is kept as it was");
    assert_eq!(v2.payload.unwrap().0["numberOfSeries"], 2);
}

/// A real `radiology serve` is killed with SIGKILL mid-sync; after restart the run
/// resumes from its checkpoint, completes, and its counts are exact.
#[tokio::test]
async fn kill_9_mid_sync_then_restart_resumes_without_loss_or_duplicates() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    seed(&orthanc, &patient(), 150, 2).await;
    let on_pacs = orthanc.all_study_uids().await;
    let (url, dir) = fresh_database().await;
    let config = Config {
        data_dir: dir.path().into(),
        sync_max_results: 20,
        sync_page_size: 5,
        sync_backfill_since: "2015-01-01".into(),
        ..TestApp::config_for(&url)
    };
    let app = TestApp::spawn_with(config.clone()).await;
    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    let id = Uuid::parse_str(endpoint["id"].as_str().unwrap()).unwrap();
    let tenant = app.tenant;
    app.stop().await;

    let mut child = crate::helpers::spawn_serve(&url, dir.path(), &config, &[
        ("RADIOLOGY_SYNC_MAX_RESULTS", "20"),
        ("RADIOLOGY_SYNC_PAGE_SIZE", "5"),
        ("RADIOLOGY_SYNC_LEASE_SECONDS", "2"),
        ("RADIOLOGY_SYNC_BACKFILL_SINCE", "2015-01-01"),
    ]);

    // Wait until the child has checkpointed part of the run, then SIGKILL it.
    let db = radiology::db::Db::connect(&url, 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progress: Option<Option<String>> = radiology::on_db!(&db, pool => sqlx::query_scalar(
            "SELECT CAST(progress AS TEXT) FROM pacs_sync_state WHERE endpoint_id = $1").bind(id).fetch_optional(pool).await).unwrap();
        if let Some(Some(p)) = progress {
            let p: Value = serde_json::from_str(&p).unwrap();
            if p["counts"]["seen"].as_i64().unwrap_or(0) > 20 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the child never got mid-way through the sync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let midway = stored_uids_db(&db, tenant).await;
    assert!(midway.len() < on_pacs.len(), "killed mid-sync ({} of {} stored)", midway.len(), on_pacs.len());

    // Restart: once the dead process's lease expires, the run resumes and completes.
    let mut app = TestApp::spawn_with(config).await;
    app.tenant = tenant;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let reports = app.state.sync.run_until_idle().await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].ok);
    let stored = stored_uids_db(&db, tenant).await;
    let distinct: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), distinct.len(), "no duplicates after the crash");
    let missing: Vec<_> = on_pacs.difference(&distinct).collect();
    assert!(missing.is_empty(), "not synced: {missing:?}; run: {:?}", reports[0]);
    assert_eq!(reports[0].created as usize, stored.len(), "the resumed run's count is exact");
    assert_eq!(sync_status(&app, &id.to_string()).await["counts"]["created"], json!(stored.len()));
    db.close().await;
}

async fn stored_uids_db(db: &radiology::db::Db, tenant: Uuid) -> Vec<String> {
    radiology::on_db!(db, pool => sqlx::query_scalar::<_, String>(
        "SELECT pacs_study_uid FROM imaging_studies WHERE tenant_id = $1").bind(tenant).fetch_all(pool).await).unwrap()
}

/// Two service processes (two lease owners) on one database: every endpoint is
/// synced exactly once, by one of them.
#[tokio::test]
async fn two_processes_share_the_work_without_syncing_an_endpoint_twice() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let (url, dir) = fresh_database().await;
    let config = Config { data_dir: dir.path().into(), sync_backfill_since: "2020-01-01".into(), ..TestApp::config_for(&url) };
    let a = TestApp::spawn_with(config.clone()).await;
    let b = TestApp::spawn_with(config).await;
    let mut endpoints = HashSet::new();
    let mut tenants = Vec::new();
    for i in 0..4 {
        let tenant = Uuid::new_v4();
        let token = a.token_for(tenant, &["radiology.admin"]);
        let r = a.post("/v1/radiology/pacs-endpoints", &token, &endpoint_body(&format!("n{i}"), &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
        assert_eq!(r.status, StatusCode::CREATED);
        endpoints.insert(Uuid::parse_str(r.json()["id"].as_str().unwrap()).unwrap());
        tenants.push(tenant);
    }
    let (ra, rb) = tokio::join!(a.state.sync.run_until_idle(), b.state.sync.run_until_idle());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let synced: Vec<Uuid> = ra.iter().chain(rb.iter()).map(|r| r.endpoint_id).collect();
    assert_eq!(synced.len(), 4, "each endpoint synced once: a={} b={}", ra.len(), rb.len());
    assert_eq!(synced.iter().copied().collect::<HashSet<_>>(), endpoints);
    for tenant in tenants {
        let uids = stored_uids(&a, tenant).await;
        assert_eq!(uids.len(), uids.iter().collect::<HashSet<_>>().len(), "no duplicates in tenant {tenant}");
        assert!(!uids.is_empty());
    }
}

#[tokio::test]
async fn a_failing_endpoint_becomes_degraded_while_others_continue() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let (app, _dir, _) = app_with(|c| c.sync_backfill_since = "2024-01-01".into()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The healthy endpoint syncs first, so each round below involves only the failing one
    // (its backoff then keeps it from being claimed twice in one round).
    let good = app.create_endpoint(&endpoint_body("up", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    let good_id = good["id"].as_str().unwrap().to_string();
    app.state.sync.run_until_idle().await.unwrap();
    let bad = app.create_endpoint(&endpoint_body("down", &format!("http://127.0.0.1:{closed}/dicom-web"), "u", "p")).await;
    let bad_id = bad["id"].as_str().unwrap().to_string();
    for attempt in 1..=3 {
        app.post(&format!("/v1/radiology/pacs-endpoints/{bad_id}/sync"), &app.admin(), &json!({})).await;
        let reports = app.state.sync.run_until_idle().await.unwrap();
        assert!(reports.iter().any(|r| r.endpoint_id.to_string() == bad_id && !r.ok), "attempt {attempt}: {reports:?}");
    }
    let status = sync_status(&app, &bad_id).await;
    assert_eq!(status["state"], "degraded", "{status:#}");
    assert_eq!(status["consecutive_failures"], 3);
    assert!(status["last_error"].as_str().unwrap().contains("connection refused"), "{status:#}");
    let next: chrono::DateTime<Utc> = status["next_run_at"].as_str().unwrap().parse().unwrap();
    assert!(next > Utc::now(), "backed off");
    let good_status = sync_status(&app, &good_id).await;
    assert_eq!(good_status["state"], "idle", "{good_status:#}");
    assert!(good_status["counts"]["created"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn sync_control_is_tenant_scoped_and_needs_admin_to_start() {
    let app = TestApp::spawn().await;
    let e = app.create_endpoint(&endpoint_body("n", "http://127.0.0.1:9/dicom-web", "u", "p")).await;
    let path = format!("/v1/radiology/pacs-endpoints/{}/sync", e["id"].as_str().unwrap());
    assert_eq!(app.post(&path, &app.reader(), &json!({})).await.status, StatusCode::FORBIDDEN);
    let other = app.token_for(app.other_tenant, &["radiology.admin"]);
    assert_eq!(app.get(&path, &other).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.post(&path, &other, &json!({})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.post(&format!("{path}?full=maybe"), &app.admin(), &json!({})).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.post(&format!("{path}?interval_seconds=5"), &app.admin(), &json!({})).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app.post(&format!("{path}?full=true&interval_seconds=300"), &app.admin(), &json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["full_requested"], true);
    assert_eq!(r.json()["interval_seconds"], 300, "the endpoint's own poll interval");

    // Pointing the endpoint at another PACS asks for a full re-backfill.
    let endpoint_path = format!("/v1/radiology/pacs-endpoints/{}", e["id"].as_str().unwrap());
    let fresh = app.create_endpoint(&endpoint_body("n2", "http://127.0.0.1:9/dicom-web", "u", "p")).await;
    let fresh_path = format!("/v1/radiology/pacs-endpoints/{}", fresh["id"].as_str().unwrap());
    assert_eq!(app.patch(&fresh_path, &app.admin(), &json!({"qido_url": "http://127.0.0.1:10/dicom-web"})).await.status, StatusCode::OK);
    assert_eq!(app.get(&format!("{fresh_path}/sync"), &app.reader()).await.json()["full_requested"], true);
    assert_eq!(app.patch(&endpoint_path, &app.admin(), &json!({"name": "renamed"})).await.status, StatusCode::OK);
}

/// A malformed QIDO item is skipped and counted with its reason; the page goes on.
#[tokio::test]
async fn malformed_items_are_skipped_and_counted() {
    use wiremock::matchers::{method, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let today = Utc::now().date_naive();
    let range = format!("{}-{}", (today - Days::new(1)).format("%Y%m%d"), today.format("%Y%m%d"));
    let item = |uid: &str| json!({"0020000D": {"vr": "UI", "Value": [uid]}, "00100020": {"vr": "LO", "Value": ["P1"]}});
    let page = json!([item("1.2.3.1"), {"00100020": {"vr": "LO", "Value": ["P1"]}}, item("1.2.x"), item("1.2.3.2")]);
    Mock::given(method("GET")).and(query_param("StudyDate", range.as_str())).and(query_param("offset", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(page.to_string(), "application/dicom+json"))
        .mount(&server).await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(204)).mount(&server).await;
    let since = (today - Days::new(1)).format("%Y-%m-%d").to_string();
    let (app, _dir, _) = app_with(|c| c.sync_backfill_since = since).await;
    app.create_endpoint(&endpoint_body("mock", &format!("{}/dicom-web", server.uri()), "u", "p")).await;
    let reports = app.state.sync.run_until_idle().await.unwrap();
    let r = &reports[0];
    assert!(r.ok, "{r:?}");
    assert_eq!((r.seen, r.created, r.failed), (4, 2, 2), "{r:?}");
    assert!(r.errors.iter().any(|e| e.contains("no Study Instance UID")), "{r:?}");
    assert!(r.errors.iter().any(|e| e.contains("1.2.x")), "{r:?}");
}

/// A run slower than the lease keeps its lease (heartbeat): a second process finds
/// nothing to claim while it goes on.
#[tokio::test]
async fn a_run_longer_than_the_lease_is_not_taken_over() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("[]", "application/dicom+json").set_delay(Duration::from_millis(5000)))
        .mount(&server)
        .await;
    let (url, dir) = fresh_database().await;
    let since = (Utc::now().date_naive() - Days::new(1)).format("%Y-%m-%d").to_string();
    let config = Config { data_dir: dir.path().into(), sync_backfill_since: since, sync_lease_seconds: 2, ..TestApp::config_for(&url) };
    let a = TestApp::spawn_with(config.clone()).await;
    let b = TestApp::spawn_with(config).await;
    a.create_endpoint(&endpoint_body("slow", &format!("{}/dicom-web", server.uri()), "u", "p")).await;
    let first = {
        let sync = a.state.sync.clone();
        tokio::spawn(async move { sync.run_until_idle().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(3000)).await; // past the 2 s lease, mid-run
    // Without the heartbeat, `b` would claim the endpoint and the two would take it from
    // each other forever (every window outlasts the lease): hence the timeout.
    let second = tokio::time::timeout(Duration::from_secs(4), b.state.sync.run_until_idle()).await;
    assert!(matches!(&second, Ok(Ok(r)) if r.is_empty()), "the running endpoint was taken over: {second:?}");
    let first = first.await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].ok, "{:?}", first[0]);
}

/// The real study store, except that one non-empty batch fails (as a database error would).
struct FailingBatch {
    inner: radiology::studies::SqlStudyStore,
    calls: std::sync::atomic::AtomicUsize,
    fail_at: usize,
}

#[async_trait::async_trait]
impl radiology::studies::StudyStore for FailingBatch {
    async fn insert(&self, t: radiology::auth::TenantId, r: &radiology::studies::StudyRow) -> radiology::db::error::StoreResult<()> {
        self.inner.insert(t, r).await
    }
    async fn get(&self, t: radiology::auth::TenantId, id: Uuid) -> radiology::db::error::StoreResult<radiology::studies::StudyRow> {
        self.inner.get(t, id).await
    }
    async fn get_by_uid(&self, t: radiology::auth::TenantId, uid: &str) -> radiology::db::error::StoreResult<radiology::studies::StudyRow> {
        self.inner.get_by_uid(t, uid).await
    }
    async fn list(
        &self,
        t: radiology::auth::TenantId,
        q: &radiology::studies::store::StudyQuery,
        p: &radiology::pagination::PageRequest,
    ) -> radiology::db::error::StoreResult<Vec<radiology::studies::StudyRow>> {
        self.inner.list(t, q, p).await
    }
    async fn count(&self, t: radiology::auth::TenantId, q: &radiology::studies::store::StudyQuery) -> radiology::db::error::StoreResult<i64> {
        self.inner.count(t, q).await
    }
    async fn upsert(
        &self,
        t: radiology::auth::TenantId,
        s: &radiology::studies::store::StudyUpsert,
    ) -> radiology::db::error::StoreResult<radiology::studies::store::UpsertOutcome> {
        self.inner.upsert(t, s).await
    }
    async fn upsert_many(
        &self,
        t: radiology::auth::TenantId,
        s: &[radiology::studies::store::StudyUpsert],
    ) -> radiology::db::error::StoreResult<Vec<radiology::studies::store::UpsertOutcome>> {
        self.upsert_batch(t, s, None).await
    }
    async fn upsert_batch(
        &self,
        t: radiology::auth::TenantId,
        s: &[radiology::studies::store::StudyUpsert],
        after: Option<radiology::db::sql::AfterWrite<'_>>,
    ) -> radiology::db::error::StoreResult<Vec<radiology::studies::store::UpsertOutcome>> {
        if !s.is_empty() && self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == self.fail_at {
            return Err(radiology::db::StoreError::Other(anyhow::anyhow!("injected database failure")));
        }
        self.inner.upsert_batch(t, s, after).await
    }
    async fn count_changes_since(&self, t: radiology::auth::TenantId, e: Uuid, since: chrono::DateTime<Utc>) -> radiology::db::error::StoreResult<(i64, i64)> {
        self.inner.count_changes_since(t, e, since).await
    }
    async fn get_version(&self, t: radiology::auth::TenantId, id: Uuid, v: i32) -> radiology::db::error::StoreResult<radiology::studies::store::StudyVersion> {
        self.inner.get_version(t, id, v).await
    }
}

/// A window whose studies fail to store is not skipped: the next run starts at it.
#[tokio::test]
async fn a_failed_store_is_retried_from_the_last_stored_window() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    // This test's own studies: other tests add studies to the shared Orthanc while it
    // runs (once, 6 studies of theirs were reported missing here; see the session note).
    let on_pacs = seed(&orthanc, &patient(), 40, 30).await;
    let (app, _dir, config) = app_with(|c| {
        c.sync_max_results = 40;
        c.sync_page_size = 10;
        c.sync_backfill_since = "2015-01-01".into();
    })
    .await;
    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    let id = endpoint["id"].as_str().unwrap().to_string();
    let failing = radiology::studies::sync::SyncService::new(
        app.state.pacs.clone(),
        std::sync::Arc::new(FailingBatch { inner: radiology::studies::SqlStudyStore::new(app.db.clone()), calls: Default::default(), fail_at: 1 }),
        std::sync::Arc::new(radiology::studies::sync::store::SqlSyncStore::new(app.db.clone())),
        radiology::studies::sync::SyncSettings::from_config(&config).unwrap(),
        app.state.metrics.clone(),
    );
    let reports = failing.run_until_idle().await.unwrap();
    assert!(!reports[0].ok, "the injected failure fails the run: {:?}", reports[0]);
    assert!(sync_status(&app, &id).await["last_error"].as_str().unwrap().contains("injected"));

    app.post(&format!("/v1/radiology/pacs-endpoints/{id}/sync"), &app.admin(), &json!({})).await;
    let resumed = app.state.sync.run_until_idle().await.unwrap();
    assert!(resumed[0].ok, "{:?}", resumed[0]);
    let stored: HashSet<String> = stored_uids(&app, app.tenant).await.into_iter().collect();
    let missing: Vec<_> = on_pacs.difference(&stored).collect();
    assert!(missing.is_empty(), "studies of the failed window were skipped: {} missing", missing.len());
}
