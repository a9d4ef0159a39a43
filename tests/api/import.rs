//! FHIR bulk `$import` with NDJSON from an independent generator (tests/gen_fhir_ndjson.py,
//! plain Python, not this project's serializer): complete imports, bad lines reported by
//! input and line, idempotent re-runs, kill -9 and resume with exact counts, reports that
//! link to their studies whichever arrives first, refusals, queueing and cancellation.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use radiology::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{fresh_database, peer_env, validate_fhir, TestApp};

/// Runs the independent generator into `dir`; returns its expected.json.
fn generate(dir: &Path, studies: usize, reports: usize, extra: &[&str]) -> Value {
    let python = std::env::var("RADIOLOGY_TEST_FHIR_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gen_fhir_ndjson.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--out", dir.to_str().unwrap(), "--studies", &studies.to_string(), "--reports", &reports.to_string()])
        .args(extra)
        .output()
        .expect("python3 runs the generator");
    assert!(out.status.success(), "generator failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn file_url(path: &Path) -> String {
    url::Url::from_file_path(path).unwrap().to_string()
}

fn kick_off_body(inputs: &[(&str, String)]) -> Value {
    let mut parameter = vec![
        json!({"name": "inputFormat", "valueString": "application/fhir+ndjson"}),
        json!({"name": "mode", "valueCode": "InitialLoad"}),
    ];
    for (kind, url) in inputs {
        parameter.push(json!({"name": "input", "part": [{"name": "type", "valueString": kind}, {"name": "url", "valueUri": url}]}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

async fn spawn_with_import_dir(dir: &Path, tweak: impl FnOnce(Config) -> Config) -> TestApp {
    let (url, db_dir) = fresh_database().await;
    let config = Config { data_dir: db_dir.path().into(), import_dir: Some(dir.into()), import_lease_seconds: 2, ..TestApp::config_for(&url) };
    std::mem::forget(db_dir); // kept for the test's life (the folder holds the SQLite file)
    TestApp::spawn_with(tweak(config)).await
}

/// POSTs `$import` with `Prefer: respond-async`; returns the status path.
async fn kick_off(app: &TestApp, body: &Value) -> String {
    let response = app
        .client
        .post(format!("{}/fhir/r4/$import", app.base))
        .bearer_auth(app.admin())
        .header("prefer", "respond-async")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response.headers().get("content-location").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(status, StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let location = location.expect("Content-Location");
    location[location.find("/fhir/r4/").unwrap()..].to_string()
}

/// Polls a status URL until the job ends; returns the manifest.
async fn wait_done(app: &TestApp, status_path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = app.get(status_path, &app.admin()).await;
        match r.status {
            StatusCode::OK => return r.json(),
            StatusCode::ACCEPTED => assert!(r.header("x-progress").is_some(), "202 carries X-Progress"),
            other => panic!("import status {other}: {}", r.text),
        }
        assert!(Instant::now() < deadline, "the import did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn output_of<'a>(manifest: &'a Value, kind: &str) -> &'a Value {
    manifest["output"].as_array().unwrap().iter().find(|o| o["type"] == kind).unwrap_or_else(|| panic!("no {kind} output: {manifest}"))
}

fn bad_lines(expected: &Value, kind: &str) -> HashSet<i64> {
    expected[kind]["bad"].as_array().unwrap().iter().map(|b| b["line"].as_i64().unwrap()).collect()
}

/// Every resource of a FHIR search (following next links).
async fn search_all(app: &TestApp, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(p) = next.take() {
        let r = app.get(&p, &app.reader()).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.text);
        let bundle = r.json();
        out.extend(bundle["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "match").map(|e| e["resource"].clone()));
        next = bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| {
            let url = l["url"].as_str().unwrap();
            url[url.find("/fhir/r4/").unwrap()..].to_string()
        });
    }
    out
}

fn has_historical_tag(r: &Value) -> bool {
    r["meta"]["tag"].as_array().is_some_and(|t| t.iter().any(|t| t["code"] == "historical" && t["system"] == "urn:radiology-service:fhir:tag"))
}

#[tokio::test]
async fn independent_ndjson_imports_completely_reports_bad_lines_and_a_rerun_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let expected = generate(dir.path(), 240, 300, &["--bad"]);
    let app = spawn_with_import_dir(dir.path(), |c| Config { import_batch_size: 64, ..c }).await;
    let studies_url = file_url(&dir.path().join("ImagingStudy.ndjson"));
    let reports_url = file_url(&dir.path().join("DiagnosticReport.ndjson"));
    let body = kick_off_body(&[("ImagingStudy", studies_url.clone()), ("DiagnosticReport", reports_url.clone())]);

    let status_path = kick_off(&app, &body).await;
    let manifest = wait_done(&app, &status_path).await;
    for (kind, url) in [("ImagingStudy", &studies_url), ("DiagnosticReport", &reports_url)] {
        let out = output_of(&manifest, kind);
        assert_eq!(out["count"], expected[kind]["valid"], "{kind}: {manifest}");
        assert_eq!(out["created"], expected[kind]["valid"]);
        assert_eq!(&out["inputUrl"], url);
        // The error file names the input and the line of every bad line, and only those.
        let error = manifest["error"].as_array().unwrap().iter().find(|e| &e["inputUrl"] == url).expect("an error file");
        let error_url = error["url"].as_str().unwrap();
        let r = app.get(&error_url[error_url.find("/fhir/r4/").unwrap()..], &app.reader()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
        let mut lines = HashSet::new();
        for outcome in r.text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
            assert_eq!(outcome["resourceType"], "OperationOutcome");
            let d = outcome["issue"][0]["diagnostics"].as_str().unwrap();
            let rest = d.strip_prefix(&format!("{url} line ")).unwrap_or_else(|| panic!("{d:?} names its input"));
            lines.insert(rest.split(':').next().unwrap().parse::<i64>().unwrap());
        }
        assert_eq!(lines, bad_lines(&expected, kind), "{kind}: rejected lines");
        assert_eq!(error["count"].as_i64().unwrap(), lines.len() as i64);
    }

    // Everything reads back tagged historical and validates with the independent validator.
    let studies = search_all(&app, "/fhir/r4/ImagingStudy?_tag=historical&_count=100").await;
    let reports = search_all(&app, "/fhir/r4/DiagnosticReport?_tag=urn:radiology-service:fhir:tag|historical&_count=100").await;
    assert_eq!(studies.len() as i64, expected["ImagingStudy"]["valid"].as_i64().unwrap());
    assert_eq!(reports.len() as i64, expected["DiagnosticReport"]["valid"].as_i64().unwrap());
    assert!(studies.iter().chain(&reports).all(has_historical_tag));
    let legacy_tagged = studies.iter().filter(|s| s["meta"]["tag"].as_array().unwrap().len() > 1).count();
    assert!(legacy_tagged > 0, "tags the source brought are kept beside historical");
    validate_fhir(&studies.iter().chain(&reports).cloned().collect::<Vec<_>>());
    // Reports whose study is in the import link to it by our id.
    let linked = reports
        .iter()
        .filter(|r| r["imagingStudy"].as_array().is_some_and(|s| s.iter().any(|s| s["reference"].as_str().is_some_and(|x| x.len() == "ImagingStudy/".len() + 36))))
        .count();
    assert!(linked > 200, "{linked} reports link to an imported study");

    // The search parameters of DiagnosticReport work on what was imported.
    let one = reports.iter().find(|r| r["basedOn"].is_array() && r["imagingStudy"].is_array()).unwrap().clone();
    let identifier = format!("{}|{}", one["identifier"][0]["system"].as_str().unwrap(), one["identifier"][0]["value"].as_str().unwrap());
    for (param, value) in [
        ("identifier", identifier.clone()),
        ("based-on", one["basedOn"][0]["reference"].as_str().unwrap().to_string()),
        ("imaging-study", one["imagingStudy"][0]["reference"].as_str().unwrap().to_string()),
        ("_id", one["id"].as_str().unwrap().to_string()),
    ] {
        let found = search_all(&app, &format!("/fhir/r4/DiagnosticReport?{param}={}", crate::helpers::urlencode(&value))).await;
        assert_eq!(found.len(), 1, "{param}={value}");
        assert_eq!(found[0]["id"], one["id"]);
    }
    let patient = one["subject"]["reference"].as_str().unwrap();
    let by_patient = search_all(&app, &format!("/fhir/r4/DiagnosticReport?patient={patient}&code=http://loinc.org|{}&category=LP29684-5&status={}",
        one["code"]["coding"][0]["code"].as_str().unwrap(), one["status"].as_str().unwrap())).await;
    assert!(by_patient.iter().any(|r| r["id"] == one["id"]));
    let year = &one["effectiveDateTime"].as_str().unwrap()[..4];
    assert!(search_all(&app, &format!("/fhir/r4/DiagnosticReport?date={year}&_id={}", one["id"].as_str().unwrap())).await.len() == 1);
    let rest = app.get(&format!("/v1/radiology/reports?identifier={}", crate::helpers::urlencode(&identifier)), &app.reader()).await;
    assert_eq!(rest.json()["items"].as_array().unwrap().len(), 1, "{}", rest.text);
    let metrics = app.request(Method::GET, "/metrics", None, None).await.text;
    let created = format!("radiology_import_resources_total{{type=\"DiagnosticReport\",outcome=\"created\"}} {}", expected["DiagnosticReport"]["valid"]);
    assert!(metrics.contains(&created), "{created} in\n{metrics}");
    let capability = app.get("/fhir/r4/metadata", &app.reader()).await.json();
    let dr = capability["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "DiagnosticReport").unwrap();
    assert!(dr["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "imaging-study" && p["definition"].is_string()));

    // A second run changes nothing: same counts, all unchanged, no new versions.
    let again = wait_done(&app, &kick_off(&app, &body).await).await;
    for kind in ["ImagingStudy", "DiagnosticReport"] {
        let out = output_of(&again, kind);
        assert_eq!(out["count"], expected[kind]["valid"]);
        assert_eq!((out["created"].as_i64(), out["updated"].as_i64()), (Some(0), Some(0)), "{again}");
    }
    let versions = search_all(&app, "/fhir/r4/DiagnosticReport?_count=500").await;
    assert!(versions.iter().all(|r| r["meta"]["versionId"] == "1"));
    // Another tenant sees neither the job nor the resources.
    let other = app.token_for(app.other_tenant, &["radiology.admin"]);
    assert_eq!(app.get(&status_path, &other).await.status, StatusCode::NOT_FOUND);
    let theirs = app.get("/fhir/r4/DiagnosticReport", &other).await.json();
    assert_eq!(theirs["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn reports_link_to_their_studies_whichever_arrives_first() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 30, 40, &[]);
    let app = spawn_with_import_dir(dir.path(), |c| c).await;
    // Reports first: their studies do not exist yet, and the references are kept as sent.
    let reports_url = file_url(&dir.path().join("DiagnosticReport.ndjson"));
    wait_done(&app, &kick_off(&app, &kick_off_body(&[("DiagnosticReport", reports_url)])).await).await;
    let before = search_all(&app, "/fhir/r4/DiagnosticReport?_count=100").await;
    assert!(before.iter().all(|r| r["imagingStudy"].as_array().unwrap().iter().all(|s| !s["reference"].as_str().unwrap_or("").contains('-') || s["reference"].as_str().unwrap().starts_with("ImagingStudy/hist-"))));
    // Then the studies: the same reports now point at our studies, by source id or by UID.
    let studies_url = file_url(&dir.path().join("ImagingStudy.ndjson"));
    wait_done(&app, &kick_off(&app, &kick_off_body(&[("ImagingStudy", studies_url)])).await).await;
    let studies = search_all(&app, "/fhir/r4/ImagingStudy?_count=100").await;
    let ours: HashSet<String> = studies.iter().map(|s| format!("ImagingStudy/{}", s["id"].as_str().unwrap())).collect();
    let after = search_all(&app, "/fhir/r4/DiagnosticReport?_count=100").await;
    let mut resolved = 0;
    for r in &after {
        for s in r["imagingStudy"].as_array().unwrap() {
            if let Some(reference) = s["reference"].as_str().filter(|x| ours.contains(*x)) {
                resolved += 1;
                assert!(s["identifier"]["value"].as_str().unwrap().starts_with("urn:oid:"), "the UID rides along: {s}");
                let found = search_all(&app, &format!("/fhir/r4/DiagnosticReport?imaging-study={reference}")).await;
                assert!(found.iter().any(|f| f["id"] == r["id"]), "imaging-study={reference}");
            }
        }
    }
    assert_eq!(resolved, 30, "each of the 30 studies is linked from its report");
    validate_fhir(&after[..5]);

    // A study that arrives by sync (not import) resolves a report that names its UID.
    let uid = "2.25.1234567890123456789";
    let report = json!({"resourceType": "DiagnosticReport", "id": "late-1", "status": "final",
        "code": {"text": "CT head"}, "subject": {"reference": "Patient/p-late"},
        "imagingStudy": [{"identifier": {"system": "urn:dicom:uid", "value": format!("urn:oid:{uid}")}}]});
    std::fs::write(dir.path().join("late.ndjson"), format!("{report}\n")).unwrap();
    wait_done(&app, &kick_off(&app, &kick_off_body(&[("DiagnosticReport", file_url(&dir.path().join("late.ndjson")))])).await).await;
    let synced = radiology::studies::store::StudyUpsert {
        study_instance_uid: uid.into(),
        patient_id: Some("p-late".into()),
        accession_number: None,
        modality: Some("CT".into()),
        started_at: None,
        status: "available".into(),
        pacs_endpoint_id: None,
        description: None,
        number_of_series: None,
        number_of_instances: None,
        payload: json!({"resourceType": "ImagingStudy", "status": "available", "subject": {"identifier": {"value": "p-late"}}}),
        payload_text: None,
    };
    let study_id = app.state.studies.upsert(radiology::auth::TenantId(app.tenant), &synced).await.unwrap().id();
    let late = search_all(&app, "/fhir/r4/DiagnosticReport?identifier=nothing-matches").await;
    assert!(late.is_empty());
    let late = search_all(&app, &format!("/fhir/r4/DiagnosticReport?imaging-study=ImagingStudy/{study_id}")).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["imagingStudy"][0]["reference"], format!("ImagingStudy/{study_id}"));
    app.stop().await;
}

/// A real `radiology serve` is killed with SIGKILL mid-import; after restart the job
/// resumes at its checkpoint and its final counts are exact.
#[tokio::test]
async fn kill_9_mid_import_then_restart_resumes_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let expected = generate(dir.path(), 2000, 2500, &["--bad"]);
    let (url, db_dir) = fresh_database().await;
    let config = Config {
        data_dir: db_dir.path().into(),
        import_dir: Some(dir.path().into()),
        import_lease_seconds: 2,
        import_batch_size: 25,
        import_workers: 0,
        ..TestApp::config_for(&url)
    };
    // Queue the job in a service that runs no import workers.
    let app = TestApp::spawn_with(config.clone()).await;
    let tenant = app.tenant;
    let inputs = vec![
        ("ImagingStudy".to_string(), file_url(&dir.path().join("ImagingStudy.ndjson"))),
        ("DiagnosticReport".to_string(), file_url(&dir.path().join("DiagnosticReport.ndjson"))),
    ];
    let request = radiology::interop::import::request::ImportRequest {
        input_format: "application/fhir+ndjson".into(),
        input_source: None,
        mode: None,
        storage_type: None,
        inputs,
    };
    let job = app.state.imports.submit(radiology::auth::TenantId(tenant), &request, None).await.unwrap();
    app.stop().await;

    let import_dir = dir.path().to_str().unwrap();
    let mut child = crate::helpers::spawn_serve(&url, db_dir.path(), &config, &[
        ("RADIOLOGY_SYNC_ENABLED", "false"),
        ("RADIOLOGY_IMPORT_DIR", import_dir),
        ("RADIOLOGY_IMPORT_BATCH_SIZE", "25"),
        ("RADIOLOGY_IMPORT_LEASE_SECONDS", "2"),
    ]);
    let db = radiology::db::Db::connect(&url, 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines: i64 = radiology::on_db!(&db, pool => sqlx::query_scalar("SELECT CAST(COALESCE(SUM(line), 0) AS BIGINT) FROM import_job_inputs WHERE job_id = $1")
            .bind(job.id).fetch_one(pool).await).unwrap();
        if lines > 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "the child never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let midway: i64 = radiology::on_db!(&db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM diagnostic_reports").fetch_one(pool).await).unwrap();
    assert!(midway < expected["DiagnosticReport"]["valid"].as_i64().unwrap(), "killed mid-import");

    // Restart with import workers: once the dead lease expires, the job resumes.
    let mut app = TestApp::spawn_with(Config { import_workers: 1, ..config }).await;
    app.tenant = tenant;
    let manifest = wait_done(&app, &format!("/fhir/r4/$import-poll-status/{}", job.id)).await;
    for (kind, table) in [("ImagingStudy", "imaging_studies"), ("DiagnosticReport", "diagnostic_reports")] {
        let valid = expected[kind]["valid"].as_i64().unwrap();
        let out = output_of(&manifest, kind);
        assert_eq!(out["count"].as_i64(), Some(valid), "{kind}: {manifest}");
        assert_eq!(out["created"].as_i64(), Some(valid), "created counted once across the crash: {manifest}");
        let rows: i64 = radiology::on_db!(&db, pool => sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(pool).await).unwrap();
        assert_eq!(rows, valid, "{kind}: no loss, no duplicates");
        let errors = manifest["error"].as_array().unwrap().iter().find(|e| e["inputUrl"] == out["inputUrl"]).unwrap();
        assert_eq!(errors["count"].as_i64().unwrap(), bad_lines(&expected, kind).len() as i64);
    }
    let error_rows: i64 = radiology::on_db!(&db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM import_errors WHERE job_id = $1")
        .bind(job.id).fetch_one(pool).await).unwrap();
    assert_eq!(error_rows as usize, bad_lines(&expected, "ImagingStudy").len() + bad_lines(&expected, "DiagnosticReport").len());
    app.stop().await;
}

#[tokio::test]
async fn inputs_outside_the_allowed_places_and_bad_kick_offs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("x.ndjson"), "{}\n").unwrap();
    let app = spawn_with_import_dir(dir.path(), |c| Config { import_allowed_hosts: "files.example".into(), ..c }).await;
    let post = |body: Value, prefer: bool, token: String| {
        let mut r = app.client.post(format!("{}/fhir/r4/$import", app.base)).bearer_auth(token).json(&body);
        if prefer {
            r = r.header("prefer", "respond-async");
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let diagnostics = |o: &Value| o["issue"].as_array().unwrap().iter().map(|i| i["diagnostics"].as_str().unwrap().to_string()).collect::<Vec<_>>().join("\n");
    for (url, why) in [
        ("https://evil.example/x.ndjson".to_string(), "RADIOLOGY_IMPORT_ALLOWED_HOSTS"),
        (file_url(&elsewhere.path().join("x.ndjson")), "RADIOLOGY_IMPORT_DIR"),
        ("ftp://files.example/x.ndjson".to_string(), "scheme"),
        ("https://user:secret@files.example/x.ndjson".to_string(), "credentials"),
    ] {
        let (status, outcome) = post(kick_off_body(&[("ImagingStudy", url.clone())]), true, app.admin()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert!(diagnostics(&outcome).contains(why), "{url}: {}", diagnostics(&outcome));
        assert!(!diagnostics(&outcome).contains("secret"), "credentials are not echoed");
    }
    let ok = kick_off_body(&[("ImagingStudy", "https://files.example/s.ndjson".into())]);
    let (status, outcome) = post(ok.clone(), false, app.admin()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(diagnostics(&outcome).contains("respond-async"));
    let (status, _) = post(ok, true, app.reader()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "importing needs radiology.admin");
    let (status, outcome) = post(json!({"inputFormat": "text/csv", "input": [{"type": "Patient", "url": "https://files.example/p"}]}), true, app.admin()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let d = diagnostics(&outcome);
    assert!(d.contains("inputFormat") && d.contains("input[0].type"), "{d}");
    app.stop().await;
}

#[tokio::test]
async fn a_second_job_queues_behind_the_first_and_a_queued_job_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 1500, 0, &[]);
    let app = spawn_with_import_dir(dir.path(), |c| Config { import_batch_size: 20, ..c }).await;
    let body = kick_off_body(&[("ImagingStudy", file_url(&dir.path().join("ImagingStudy.ndjson")))]);
    let first = kick_off(&app, &body).await;
    let second = kick_off(&app, &body).await;
    let third = kick_off(&app, &body).await;
    let r = app.get(&third, &app.admin()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("x-progress").unwrap().contains("queued"), "{:?}", r.header("x-progress"));
    let cancelled = app.request(Method::DELETE, &third, Some(&app.admin()), None).await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED);
    assert_eq!(app.get(&third, &app.admin()).await.status, StatusCode::NOT_FOUND, "a cancelled job is gone");
    let a = wait_done(&app, &first).await;
    let b = wait_done(&app, &second).await;
    assert_eq!(output_of(&a, "ImagingStudy")["created"], 1500);
    assert_eq!(output_of(&b, "ImagingStudy")["unchanged"], 1500, "the second ran after the first: {b}");
    // Deleting a finished job forgets it.
    assert_eq!(app.request(Method::DELETE, &first, Some(&app.admin()), None).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.get(&first, &app.admin()).await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

/// Stops a child process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Inputs over HTTP from a real server (Python's http.server) on an allowed host.
#[tokio::test]
async fn http_inputs_on_an_allowed_host_import() {
    let Some(python) = peer_env("RADIOLOGY_TEST_FHIR_PYTHON", "python3 (for an HTTP file server)") else { return };
    let dir = tempfile::tempdir().unwrap();
    let expected = generate(dir.path(), 50, 60, &["--bad"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = KillOnDrop(std::process::Command::new(python)
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory", dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/expected.json")).await.is_err() {
        assert!(Instant::now() < deadline, "http.server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = spawn_with_import_dir(dir.path(), |c| Config { import_allowed_hosts: format!("127.0.0.1:{port}"), ..c }).await;
    let body = kick_off_body(&[("ImagingStudy", format!("{base}/ImagingStudy.ndjson")), ("DiagnosticReport", format!("{base}/DiagnosticReport.ndjson"))]);
    let manifest = wait_done(&app, &kick_off(&app, &body).await).await;
    for kind in ["ImagingStudy", "DiagnosticReport"] {
        assert_eq!(output_of(&manifest, kind)["count"], expected[kind]["valid"], "{manifest}");
    }
    app.stop().await;
}

/// `radiology export-studies` builds ImagingStudy NDJSON from a real PACS (Orthanc) with
/// the sync's mapping; `radiology import` loads it: every study, tagged historical.
#[tokio::test]
async fn export_studies_from_orthanc_then_the_import_cli_loads_them() {
    let Some(orthanc) = crate::helpers::Orthanc::from_env() else { return };
    let patient = format!("EXP-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut uids = HashSet::new();
    for (i, date) in ["20190304", "20210611", "20230102"].iter().enumerate() {
        uids.insert(orthanc.create_study(&patient, &format!("ACC-{patient}-{i}"), date, "CT", "Thorax export").await);
    }
    let (url, db_dir) = fresh_database().await;
    let config = Config { data_dir: db_dir.path().into(), ..TestApp::config_for(&url) };
    let app = TestApp::spawn_with(config.clone()).await;
    let endpoint = app
        .create_endpoint(&crate::helpers::endpoint_body("orthanc-export", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password))
        .await;
    let tenant = app.tenant;
    app.stop().await;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_radiology"))
            .args(args)
            .env("RADIOLOGY_DATABASE_URL", &url)
            .env("RADIOLOGY_DATA_DIR", db_dir.path())
            .env("RADIOLOGY_JWT_SECRET", crate::helpers::JWT_SECRET)
            .env("RADIOLOGY_SECRET_KEY", config.secret_key.as_ref().unwrap().expose())
            .env("RUST_LOG", "warn")
            .output()
            .expect("the radiology CLI runs")
    };
    let out = cli(&["export-studies", "--endpoint", endpoint["id"].as_str().unwrap(), "--since", "2015-01-01"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mine: Vec<&Value> = lines.iter().filter(|s| s["subject"]["identifier"]["value"] == patient.as_str()).collect();
    assert_eq!(mine.len(), 3, "{lines:?}");
    validate_fhir(&mine.iter().map(|v| (*v).clone()).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exported-ImagingStudy.ndjson");
    std::fs::write(&file, mine.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
    let out = cli(&["import", "--tenant", &tenant.to_string(), file.to_str().unwrap()]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{summary}{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary.lines().any(|l| l.starts_with("ImagingStudy") && l.split_whitespace().nth(1) == Some("3")), "{summary}");
    let db = radiology::db::Db::connect(&url, 1).await.unwrap();
    let stored: Vec<String> = radiology::on_db!(&db, pool => sqlx::query_scalar("SELECT pacs_study_uid FROM imaging_studies WHERE tenant_id = $1")
        .bind(tenant).fetch_all(pool).await).unwrap();
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), uids);
}
