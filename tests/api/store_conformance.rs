//! The store contract, run against whichever backend RADIOLOGY_TEST_BACKEND selects
//! (scripts/test runs the suite once per backend).

use radiology::auth::TenantId;
use radiology::db::{Db, StoreError};
use radiology::pacs::store::EndpointFilter;
use radiology::pacs::{EndpointRow, PacsStore, SqlPacsStore};
use radiology::pagination::PageRequest;
use radiology::studies::store::StudyQuery;
use radiology::studies::{SqlStudyStore, StudyRow, StudyStore};
use serde_json::json;
use sqlx::types::Json;
use uuid::Uuid;

use crate::helpers::fresh_database;

async fn db() -> (Db, tempfile::TempDir) {
    let (url, dir) = fresh_database().await;
    let db = Db::connect(&url, 3).await.unwrap();
    db.migrate().await.unwrap();
    (db, dir)
}

fn endpoint(tenant: TenantId, node: &str) -> EndpointRow {
    let now = radiology::db::now();
    EndpointRow {
        id: Uuid::new_v4(),
        tenant_id: tenant.0,
        node_id: node.into(),
        name: Some(format!("PACS {node}")),
        qido_url: "http://pacs/dicom-web".into(),
        wado_url: Some("http://pacs/dicom-web".into()),
        stow_url: None,
        auth_mode: Some("basic".into()),
        auth_config: Some(Json(json!({"username": "u", "password": {"$sealed": "v1:x"}}))),
        facility_id: Some(Uuid::new_v4()),
        active: true,
        created_at: now,
        updated_at: now,
        timeout_ms: 1234,
        last_test: None,
    }
}

fn page(limit: i64) -> PageRequest {
    PageRequest { limit, after: None }
}

#[tokio::test]
async fn pacs_store_round_trips_and_scopes_every_call_by_tenant() {
    let (db, _dir) = db().await;
    let store = SqlPacsStore::new(db.clone());
    let (a, b) = (TenantId(Uuid::new_v4()), TenantId(Uuid::new_v4()));
    let row = endpoint(a, "n1");
    store.insert(a, &row).await.unwrap();

    let read = store.get(a, row.id).await.unwrap();
    assert_eq!((read.id, read.created_at, read.timeout_ms, &read.auth_config), (row.id, row.created_at, 1234, &row.auth_config));
    assert!(matches!(store.get(b, row.id).await, Err(StoreError::NotFound)));
    assert!(store.list(b, &EndpointFilter::default(), &page(10)).await.unwrap().is_empty());
    assert!(matches!(store.update(b, &row).await, Err(StoreError::NotFound)));
    assert!(matches!(store.set_last_test(b, row.id, &json!({})).await, Err(StoreError::NotFound)));
    assert!(matches!(store.delete_unreferenced(b, row.id).await, Err(StoreError::NotFound)));

    store.set_last_test(a, row.id, &json!({"ok": true})).await.unwrap();
    assert_eq!(store.get(a, row.id).await.unwrap().last_test.unwrap().0, json!({"ok": true}));
    let mut changed = read.clone();
    changed.name = Some("renamed".into());
    changed.active = false;
    store.update(a, &changed).await.unwrap();
    let read = store.get(a, row.id).await.unwrap();
    assert_eq!((read.name.as_deref(), read.active), (Some("renamed"), false));
}

#[tokio::test]
async fn one_active_endpoint_per_tenant_node() {
    let (db, _dir) = db().await;
    let store = SqlPacsStore::new(db);
    let (a, b) = (TenantId(Uuid::new_v4()), TenantId(Uuid::new_v4()));
    store.insert(a, &endpoint(a, "n1")).await.unwrap();
    assert!(matches!(store.insert(a, &endpoint(a, "n1")).await, Err(StoreError::Conflict(_))));
    store.insert(b, &endpoint(b, "n1")).await.unwrap();
    let mut inactive = endpoint(a, "n1");
    inactive.active = false;
    store.insert(a, &inactive).await.unwrap();
}

#[tokio::test]
async fn pacs_list_filters_and_pages_in_a_stable_order() {
    let (db, _dir) = db().await;
    let store = SqlPacsStore::new(db);
    let a = TenantId(Uuid::new_v4());
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut row = endpoint(a, &format!("n{i}"));
        row.active = i != 2;
        store.insert(a, &row).await.unwrap();
        ids.push(row.id);
    }
    let active = store.list(a, &EndpointFilter { active: Some(true), ..Default::default() }, &page(10)).await.unwrap();
    assert_eq!(active.len(), 4);
    let node = store.list(a, &EndpointFilter { node_id: Some("n3".into()), ..Default::default() }, &page(10)).await.unwrap();
    assert_eq!(node[0].id, ids[3]);
    let mut seen = Vec::new();
    let mut request = page(2);
    loop {
        let rows = store.list(a, &EndpointFilter::default(), &request).await.unwrap();
        let more = rows.len() as i64 > request.limit;
        seen.extend(rows.iter().take(2).map(|r| r.id));
        if !more {
            break;
        }
        request.after = Some(rows[1].cursor());
    }
    assert_eq!(seen, ids);
}

fn study(tenant: TenantId, uid: &str, endpoint: Option<Uuid>) -> StudyRow {
    let now = radiology::db::now();
    StudyRow {
        id: Uuid::new_v4(),
        tenant_id: tenant.0,
        patient_id: Some("P1".into()),
        encounter_id: None,
        order_id: None,
        accession_number: Some(format!("ACC-{uid}")),
        modality: Some("CT".into()),
        started_at: Some(now),
        status: "available".into(),
        pacs_study_uid: uid.into(),
        pacs_endpoint_id: endpoint,
        description: Some("CT HEAD".into()),
        number_of_series: Some(2),
        number_of_instances: Some(40),
        payload: Some(Json(json!({"resourceType": "ImagingStudy"}))),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

#[tokio::test]
async fn study_store_is_unique_per_tenant_uid_and_referenced_endpoints_are_not_deleted() {
    let (db, _dir) = db().await;
    let studies = SqlStudyStore::new(db.clone());
    let endpoints = SqlPacsStore::new(db);
    let (a, b) = (TenantId(Uuid::new_v4()), TenantId(Uuid::new_v4()));
    let ep = endpoint(a, "n1");
    endpoints.insert(a, &ep).await.unwrap();
    let row = study(a, "1.2.3", Some(ep.id));
    studies.insert(a, &row).await.unwrap();
    assert_eq!(studies.get(a, row.id).await.unwrap(), row, "every column round-trips");
    assert_eq!(studies.get_by_uid(a, "1.2.3").await.unwrap().id, row.id);
    assert!(matches!(studies.get(b, row.id).await, Err(StoreError::NotFound)));
    assert!(matches!(studies.get_by_uid(b, "1.2.3").await, Err(StoreError::NotFound)));
    assert!(matches!(studies.insert(a, &study(a, "1.2.3", None)).await, Err(StoreError::Conflict(_))));
    studies.insert(b, &study(b, "1.2.3", None)).await.unwrap();

    let filter = StudyQuery { accession_number: Some("ACC-1.2.3".into()), ..Default::default() };
    assert_eq!(studies.list(a, &filter, &page(10)).await.unwrap().len(), 1);
    let filter = StudyQuery { pacs_endpoint_id: Some(ep.id), statuses: vec!["cancelled".into()], ..Default::default() };
    assert!(studies.list(a, &filter, &page(10)).await.unwrap().is_empty());

    assert!(matches!(endpoints.delete_unreferenced(a, ep.id).await, Err(StoreError::Conflict(_))));
    let unused = endpoint(a, "n2");
    endpoints.insert(a, &unused).await.unwrap();
    endpoints.delete_unreferenced(a, unused.id).await.unwrap();
    assert!(matches!(endpoints.get(a, unused.id).await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn system_sweep_sees_every_tenant_and_replaces_only_the_named_row() {
    let (db, _dir) = db().await;
    let store = SqlPacsStore::new(db);
    let (a, b) = (TenantId(Uuid::new_v4()), TenantId(Uuid::new_v4()));
    let (ra, rb) = (endpoint(a, "n"), endpoint(b, "n"));
    store.insert(a, &ra).await.unwrap();
    store.insert(b, &rb).await.unwrap();
    assert_eq!(store.all_auth_configs().await.unwrap().len(), 2);
    store.replace_auth_config(a, ra.id, &json!({"token": "x"})).await.unwrap();
    store.replace_auth_config(a, rb.id, &json!({"token": "y"})).await.unwrap();
    assert_eq!(store.get(a, ra.id).await.unwrap().auth_config.unwrap().0, json!({"token": "x"}));
    assert_eq!(store.get(b, rb.id).await.unwrap().auth_config, rb.auth_config, "another tenant's row is untouched");
}

fn upsert_of(uid: &str, series: i32) -> radiology::studies::store::StudyUpsert {
    radiology::studies::store::StudyUpsert {
        study_instance_uid: uid.into(),
        patient_id: Some("P1".into()),
        accession_number: Some("A1".into()),
        modality: Some("CT".into()),
        started_at: Some(radiology::db::now()),
        status: "available".into(),
        pacs_endpoint_id: None,
        description: None,
        number_of_series: Some(series),
        number_of_instances: Some(series * 10),
        payload: json!({"resourceType": "ImagingStudy", "status": "available", "numberOfSeries": series}),
        payload_text: None,
    }
}

#[tokio::test]
async fn upsert_creates_then_leaves_unchanged_then_versions_a_change() {
    use radiology::studies::store::UpsertOutcome;
    let (db, _dir) = db().await;
    let store = SqlStudyStore::new(db);
    let a = TenantId(Uuid::new_v4());
    let first = upsert_of("1.2.840.5", 1);
    let UpsertOutcome::Created(id) = store.upsert(a, &first).await.unwrap() else { panic!("created") };
    assert_eq!(store.upsert(a, &first).await.unwrap(), UpsertOutcome::Unchanged(id));
    let row = store.get(a, id).await.unwrap();
    assert_eq!(row.version, 1);
    let mut changed = first.clone();
    changed.number_of_series = Some(2);
    changed.payload["numberOfSeries"] = json!(2);
    assert_eq!(store.upsert(a, &changed).await.unwrap(), UpsertOutcome::Updated(id));
    let row = store.get(a, id).await.unwrap();
    assert_eq!((row.version, row.number_of_series), (2, Some(2)));
    assert!(row.updated_at >= row.created_at);
    assert_eq!(store.get_version(a, id, 1).await.unwrap().payload.unwrap().0["numberOfSeries"], 1);
    assert_eq!(store.get_version(a, id, 2).await.unwrap().payload.unwrap().0["numberOfSeries"], 2);
    assert!(matches!(store.get_version(a, id, 3).await, Err(StoreError::NotFound)));
    assert!(matches!(store.get_version(TenantId(Uuid::new_v4()), id, 1).await, Err(StoreError::NotFound)));
}

/// Ten writers of one new study, each with different content (its `started_at`):
/// exactly one creates it, none fails.
#[tokio::test]
async fn concurrent_upserts_of_one_new_study_create_exactly_one_row() {
    use radiology::studies::store::UpsertOutcome;
    let (db, _dir) = db().await;
    let store = std::sync::Arc::new(SqlStudyStore::new(db));
    let a = TenantId(Uuid::new_v4());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.upsert(a, &upsert_of("1.2.840.77", 1)).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), UpsertOutcome::Created(_)) {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    let rows = store.list(a, &StudyQuery::default(), &page(50)).await.unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn upsert_many_decides_each_study_in_order_and_keeps_history() {
    use radiology::studies::store::UpsertOutcome;
    let (db, _dir) = db().await;
    let store = SqlStudyStore::new(db);
    let a = TenantId(Uuid::new_v4());
    let UpsertOutcome::Created(kept) = store.upsert(a, &upsert_of("1.2.9.1", 1)).await.unwrap() else { panic!() };
    let UpsertOutcome::Created(changed) = store.upsert(a, &upsert_of("1.2.9.2", 1)).await.unwrap() else { panic!() };
    let mut change = upsert_of("1.2.9.2", 3);
    change.started_at = store.get(a, changed).await.unwrap().started_at;
    let mut same = upsert_of("1.2.9.1", 1);
    same.started_at = store.get(a, kept).await.unwrap().started_at;
    let batch = vec![upsert_of("1.2.9.3", 1), same, change, upsert_of("1.2.9.4", 2)];
    let outcomes = store.upsert_many(a, &batch).await.unwrap();
    assert!(matches!(outcomes[0], UpsertOutcome::Created(_)));
    assert_eq!(outcomes[1], UpsertOutcome::Unchanged(kept));
    assert_eq!(outcomes[2], UpsertOutcome::Updated(changed));
    let UpsertOutcome::Created(fourth) = outcomes[3] else { panic!("{outcomes:?}") };
    let row = store.get(a, fourth).await.unwrap();
    assert_eq!((row.version, row.number_of_series, row.number_of_instances), (1, Some(2), Some(20)));
    assert_eq!(row.payload.unwrap().0["numberOfSeries"], 2);
    assert_eq!(store.get_version(a, fourth, 1).await.unwrap().payload.unwrap().0["numberOfSeries"], 2);
    assert_eq!(store.get(a, changed).await.unwrap().version, 2);
    assert_eq!(store.get_version(a, changed, 2).await.unwrap().payload.unwrap().0["numberOfSeries"], 3);
    assert_eq!(store.list(a, &StudyQuery::default(), &page(50)).await.unwrap().len(), 4);
}

#[tokio::test]
async fn overlapping_batches_racing_store_each_study_once() {
    let (db, _dir) = db().await;
    let store = std::sync::Arc::new(SqlStudyStore::new(db));
    let a = TenantId(Uuid::new_v4());
    let batch = |from: usize| (from..from + 40).map(|i| upsert_of(&format!("1.2.10.{}", i + 1), 1)).collect::<Vec<_>>();
    let tasks: Vec<_> = [0, 20, 10]
        .into_iter()
        .map(|from| {
            let store = store.clone();
            let studies = batch(from);
            tokio::spawn(async move { store.upsert_many(a, &studies).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().len(), 40);
    }
    let rows = store.list(a, &StudyQuery::default(), &page(500)).await.unwrap();
    assert_eq!(rows.len(), 60, "studies 1..60, each once");
}

/// Migration 0007 moves each report's `imaging-study` rows of diagnostic_report_index
/// into its `tokens`: afterwards the tokens are exactly what the code writes for the same
/// report (search_tokens), and the REST/FHIR search and links read them. It derives each
/// study's `_tag` terms (`tags`) from its payload, which the `_tag` search reads; a study
/// row written later by plain SQL (the legacy migration) has none and is searched by its
/// payload.
#[tokio::test]
async fn migration_0007_moves_report_study_references_into_the_tokens() {
    use radiology::reports::store::{search_tokens, IndexEntry};
    let (url, _dir) = fresh_database().await;
    let db = Db::connect(&url, 3).await.unwrap();
    db.migrate_to(6).await.unwrap();
    let (tenant, id, now) = (Uuid::new_v4(), Uuid::new_v4(), radiology::db::now());
    let payload = json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CT"},
        "identifier": [{"value": "R1"}],
        "imagingStudy": [
            {"reference": "ImagingStudy/st-1"},
            {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}},
            {"reference": "ImagingStudy/st-2", "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.4"}}
        ]});
    // As the code before 0007 stored it: its token values in `tokens`, one index row per reference.
    let identifier = IndexEntry { param: "identifier", system: None, value: Some("R1".into()), study_uid: None };
    let before = search_tokens(std::slice::from_ref(&identifier), &payload);
    let rows = [(Some("ref"), Some("st-1"), None), (None, None, Some("1.2.3")), (Some("ref"), Some("st-2"), Some("1.2.4"))];
    match &db {
        Db::Postgres(pool) => {
            sqlx::query("INSERT INTO diagnostic_reports (id, tenant_id, business_key, status, payload, created_at, updated_at, tokens) \
                         VALUES ($1, $2, 'identifier:|R1', 'final', $3, $4, $4, $5)")
                .bind(id).bind(tenant).bind(Json(&payload)).bind(now).bind(&before).execute(pool).await.unwrap();
            for (system, value, uid) in rows {
                sqlx::query("INSERT INTO diagnostic_report_index (tenant_id, report_id, param, system, value, study_uid) VALUES ($1, $2, 'imaging-study', $3, $4, $5)")
                    .bind(tenant).bind(id).bind(system).bind(value).bind(uid).execute(pool).await.unwrap();
            }
        }
        Db::Sqlite(pool) => {
            sqlx::query("INSERT INTO diagnostic_reports (id, tenant_id, business_key, status, payload, created_at, updated_at, tokens) \
                         VALUES ($1, $2, 'identifier:|R1', 'final', $3, $4, $4, $5)")
                .bind(id).bind(tenant).bind(Json(&payload)).bind(now).bind(json!(before).to_string()).execute(pool).await.unwrap();
            for (system, value, uid) in rows {
                sqlx::query("INSERT INTO diagnostic_report_index (tenant_id, report_id, param, system, value, study_uid) VALUES ($1, $2, 'imaging-study', $3, $4, $5)")
                    .bind(tenant).bind(id).bind(system).bind(value).bind(uid).execute(pool).await.unwrap();
            }
        }
    }
    let tagged = json!({"resourceType": "ImagingStudy", "status": "available",
        "meta": {"tag": [{"system": "urn:x", "code": "a|b"}, {"code": "legacy"}]}});
    let sql = "INSERT INTO imaging_studies (id, tenant_id, status, pacs_study_uid, payload, created_at, updated_at) VALUES ($1, $2, 'available', $3, $4, $5, $5)";
    let (study_before, study_sql) = (Uuid::new_v4(), Uuid::new_v4());
    radiology::on_db!(&db, pool => sqlx::query(sql).bind(study_before).bind(tenant).bind("1.2.77").bind(Json(&tagged)).bind(now)
        .execute(pool).await.map(|r| r.rows_affected())).unwrap();
    db.migrate().await.unwrap();
    radiology::on_db!(&db, pool => sqlx::query(sql).bind(study_sql).bind(tenant).bind("1.2.78").bind(Json(&tagged)).bind(now)
        .execute(pool).await.map(|r| r.rows_affected())).unwrap();
    let studies = SqlStudyStore::new(db.clone());
    let by_tag = |system: Option<&str>, code: &str| StudyQuery { tags: vec![(system.map(str::to_string), code.to_string())], ..Default::default() };
    for (system, code, hits) in [(Some("urn:x"), "a|b", 2), (None, "a|b", 2), (None, "legacy", 2), (Some("urn:y"), "a|b", 0), (None, "other", 0)] {
        assert_eq!(studies.count(TenantId(tenant), &by_tag(system, code)).await.unwrap(), hits, "{system:?} {code}");
    }
    let study_tags: Option<String> = match &db {
        Db::Postgres(pool) => sqlx::query_scalar::<_, Option<Vec<String>>>("SELECT tags FROM imaging_studies WHERE id = $1").bind(study_before)
            .fetch_one(pool).await.unwrap().map(|t| json!(t).to_string()),
        Db::Sqlite(pool) => sqlx::query_scalar("SELECT tags FROM imaging_studies WHERE id = $1").bind(study_before).fetch_one(pool).await.unwrap(),
    };
    let mut study_tags: Vec<String> = serde_json::from_str(&study_tags.expect("derived by the migration")).unwrap();
    let mut written = radiology::interop::fhir::resource::tag_terms(&tagged);
    (study_tags.sort(), written.sort());
    assert_eq!(study_tags, written, "the terms the code writes for the same payload, in any order");

    let tokens: Vec<String> = match &db {
        Db::Postgres(pool) => sqlx::query_scalar("SELECT tokens FROM diagnostic_reports WHERE id = $1").bind(id).fetch_one(pool).await.unwrap(),
        Db::Sqlite(pool) => {
            let text: String = sqlx::query_scalar("SELECT tokens FROM diagnostic_reports WHERE id = $1").bind(id).fetch_one(pool).await.unwrap();
            serde_json::from_str(&text).unwrap()
        }
    };
    let mut scratch = radiology::interop::fhir::resource::Issues::default();
    let mut index = vec![identifier];
    index.extend(radiology::reports::from_fhir::study_references(&payload, &mut scratch));
    assert!(scratch.is_empty());
    let expected = search_tokens(&index, &payload);
    assert!(expected.contains(&"imaging-study|src|st-1".to_string()) && expected.contains(&"imaging-study|uid|1.2.4".to_string()), "{expected:?}");
    assert_eq!(tokens, expected);

    // The search reads them: by UID, by referenced id, and by the id a study had in its source.
    let store = radiology::reports::SqlReportStore::new(db.clone());
    let search = |uids: &[&str], ref_ids: &[&str]| radiology::reports::store::ReportQuery {
        imaging_study: Some(radiology::reports::store::StudyMatch {
            uids: uids.iter().map(|s| s.to_string()).collect(),
            ref_ids: ref_ids.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    };
    use radiology::reports::ReportStore;
    let t = TenantId(tenant);
    for (uids, refs, hits) in [(&["1.2.3"][..], &[][..], 1), (&["1.2.4"], &[], 1), (&[], &["st-2"], 1), (&["9.9"], &["st-9"], 0), (&["1.2.5"], &[], 0)] {
        assert_eq!(store.count(t, &search(uids, refs)).await.unwrap(), hits, "{uids:?} {refs:?}");
    }
    assert_eq!(store.count(TenantId(Uuid::new_v4()), &search(&["1.2.3"], &[])).await.unwrap(), 0, "another tenant's report");
    // st-1 was a study's id in its source: the report is found from that study's UID, and
    // links to it. st-2 too, but its reference names a UID, which wins.
    for (source_id, uid) in [("st-1", "1.2.9"), ("st-2", "1.2.8")] {
        let sql = "INSERT INTO fhir_source_ids (tenant_id, resource_type, source_id, business_key) VALUES ($1, 'ImagingStudy', $2, $3)";
        radiology::on_db!(&db, pool => sqlx::query(sql).bind(tenant).bind(source_id).bind(uid).execute(pool).await.map(|r| r.rows_affected())).unwrap();
    }
    assert_eq!(store.count(t, &search(&["1.2.9"], &[])).await.unwrap(), 1);
    assert_eq!(store.count(t, &search(&["1.2.8"], &[])).await.unwrap(), 0);
    let row = store.get(t, id).await.unwrap();
    let links: Vec<(Option<String>, Option<String>)> =
        store.study_links(t, &[row]).await.unwrap().into_iter().map(|l| (l.ref_id, l.study_uid)).collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(links, [(some("st-1"), some("1.2.9")), (None, some("1.2.3")), (some("st-2"), some("1.2.4"))]);
}

/// An import whose batches keep creating everything inserts first and looks up only the
/// rows whose insert met an existing one: those are still compared, versioned or left
/// unchanged exactly as after a lookup, for studies and for reports.
#[tokio::test]
async fn insert_first_batches_decide_existing_rows_as_a_lookup_would() {
    use radiology::db::sql::{AfterWrite, UpsertOutcome};
    use radiology::reports::ReportStore;
    let (db, _dir) = db().await;
    let a = TenantId(Uuid::new_v4());
    let no_followups = |_: &[UpsertOutcome]| Vec::new();
    let insert_first = || Some(AfterWrite { followups: &no_followups, gate: None, insert_first: true });

    let studies = SqlStudyStore::new(db.clone());
    let UpsertOutcome::Created(kept) = studies.upsert(a, &upsert_of("1.2.11.1", 1)).await.unwrap() else { panic!() };
    let UpsertOutcome::Created(changed) = studies.upsert(a, &upsert_of("1.2.11.2", 1)).await.unwrap() else { panic!() };
    let mut same = upsert_of("1.2.11.1", 1);
    same.started_at = studies.get(a, kept).await.unwrap().started_at;
    let mut change = upsert_of("1.2.11.2", 3);
    change.started_at = studies.get(a, changed).await.unwrap().started_at;
    let outcomes = studies.upsert_batch(a, &[upsert_of("1.2.11.3", 1), same, change], insert_first()).await.unwrap();
    assert!(matches!(outcomes[0], UpsertOutcome::Created(_)), "{outcomes:?}");
    assert_eq!(outcomes[1..], [UpsertOutcome::Unchanged(kept), UpsertOutcome::Updated(changed)]);
    assert_eq!(studies.get(a, changed).await.unwrap().version, 2);
    assert_eq!(studies.list(a, &StudyQuery::default(), &page(50)).await.unwrap().len(), 3);

    let reports = radiology::reports::SqlReportStore::new(db);
    let report = |id: &str, status: &str| {
        radiology::reports::from_fhir::from_fhir(json!({"resourceType": "DiagnosticReport", "id": id, "status": status,
            "code": {"text": "CT"}, "imagingStudy": [{"reference": "ImagingStudy/st-1"}]}))
        .unwrap()
    };
    let stored = reports.upsert_batch(a, &[report("r1", "final"), report("r2", "final")], None).await.unwrap();
    let outcomes = reports.upsert_batch(a, &[report("r3", "final"), report("r1", "final"), report("r2", "amended")], insert_first()).await.unwrap();
    assert!(matches!(outcomes[0], UpsertOutcome::Created(_)), "{outcomes:?}");
    assert_eq!(outcomes[1..], [UpsertOutcome::Unchanged(stored[0].id()), UpsertOutcome::Updated(stored[1].id())]);
    let amended = reports.get(a, stored[1].id()).await.unwrap();
    assert_eq!((amended.version, amended.status.as_str()), (2, "amended"));
    let all = radiology::reports::store::ReportQuery::default();
    assert_eq!(reports.count(a, &all).await.unwrap(), 3);
}
