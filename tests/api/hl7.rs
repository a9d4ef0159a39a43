//! HL7 v2 over MLLP with real peers: python-hl7's `mllp_send` as the RIS sending
//! orders and results (hand-written fixtures in tests/hl7), its asyncio MLLP server as
//! the RIS receiving our outbound messages; a kill -9 mid-stream; the round-trip check
//! against a study synced from the real Orthanc.

use std::time::{Duration, Instant};

use radiology::interop::hl7::mllp::{self, Decoder, Frame};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::helpers::{ack_field, endpoint_body, free_port, hl7_fixture, mllp_send, spawn_serve, validate_fhir, Orthanc, Ris, TestApp};

const CONNECTORS: &str = "/v1/radiology/hl7-connectors";

async fn inbound_connector(app: &TestApp) -> Value {
    let r = app
        .post(CONNECTORS, &app.admin(), &json!({"direction": "inbound", "name": "RIS", "sending_application": "RIS", "sending_facility": "GENERAL_HOSP"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json()
}

/// A plain MLLP client: sends each message and reads its ACK (one at a time).
struct Client {
    socket: TcpStream,
    decoder: Decoder,
}

impl Client {
    async fn connect(addr: &str) -> Self {
        Client { socket: TcpStream::connect(addr).await.expect("MLLP listener"), decoder: Decoder::new(1 << 24) }
    }

    async fn send(&mut self, message: &[u8]) -> std::io::Result<String> {
        self.socket.write_all(&mllp::encode(message)).await?;
        let mut buf = [0u8; 8192];
        loop {
            if let Some(Frame::Message(ack)) = self.decoder.next_frame() {
                return Ok(String::from_utf8_lossy(&ack).into_owned());
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.socket.read(&mut buf)).await.expect("an ACK within 20 s")?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            self.decoder.push(&buf[..n]);
        }
    }
}

fn orm(control_id: &str, placer: &str, accession: &str, uid: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|RIS|GENERAL_HOSP|RADIOLOGY|PLATFORM|20261205101500||ORM^O01|{control_id}|P|2.3.1\r\
PID|1||MRN-{placer}^^^HOSP^MR||DOE^JANE\r\
ORC|NW|{placer}^EMR|F{placer}^RIS||SC\r\
OBR|1|{placer}^EMR|F{placer}^RIS|71020^CHEST 2 VIEWS^C4||||||||||||||{accession}|RP-{placer}|||||CR\r\
ZDS|{uid}^RIS^Application^DICOM\r"
    )
    .into_bytes()
}

async fn get(app: &TestApp, path: &str) -> Value {
    let r = app.get(path, &app.reader()).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    r.json()
}

async fn order_by_accession(app: &TestApp, accession: &str) -> Value {
    let list = get(app, &format!("/v1/radiology/orders?accession_number={accession}")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "one order {accession}: {list}");
    list["items"][0].clone()
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn orders_and_results_sent_by_mllp_send_become_orders_and_reports() {
    let app = TestApp::spawn().await;
    inbound_connector(&app).await;
    // The happy path, in the RIS's order: NW, XO, SC (v2.5.1), then the results.
    for (fixture, control_id) in [
        ("orm_o01_nw_v231.hl7", "RIS000101"),
        ("orm_o01_xo_v231.hl7", "RIS000102"),
        ("orm_o01_sc_v251.hl7", "RIS000104"),
        ("oru_r01_prelim_v231.hl7", "RIS000110"),
        ("oru_r01_final_v251.hl7", "RIS000111"),
        ("oru_r01_corrected_v251.hl7", "RIS000112"),
        ("omi_o23_nw_v251.hl7", "RIS000301"),
        ("orm_o01_latin1_v231.hl7", "RIS000401"),
        ("orm_o01_utf8_v251.hl7", "RIS000501"),
        ("oru_r01_critical_v251.hl7", "RIS000211"),
    ] {
        let Some(ack) = mllp_send(&app.mllp, fixture).await else { return };
        assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{fixture}: {ack}");
        assert_eq!(ack_field(&ack, "MSA", 2, 1).as_deref(), Some(control_id), "{fixture}: MSA-2 answers MSH-10");
        assert_eq!(ack_field(&ack, "MSH", 9, 1).as_deref(), Some("ACK"));
        assert!(ack_field(&ack, "MSH", 10, 1).is_some_and(|c| c != control_id), "the ACK has its own control id");
    }
    // LF segment ends, exactly as written (mllp_send --loose would turn them into CR).
    let mut client = Client::connect(&app.mllp).await;
    let lf = hl7_fixture("orm_o01_lf_v231.hl7");
    assert!(lf.contains(&b'\n') && !lf.contains(&b'\r'));
    let ack = client.send(&lf).await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");

    // Order 1 after NW → XO → SC: the XO's procedure, in process, everything else kept.
    let o = order_by_accession(&app, "ACC1001").await;
    assert_eq!(o["status"], "active");
    assert_eq!(o["order_control"], "SC");
    assert_eq!(o["order_status"], "IP");
    assert_eq!(o["procedure_code"], "71030");
    assert_eq!(o["placer_number"], "PLC1001");
    assert_eq!(o["filler_number"], "FIL1001");
    assert_eq!(o["modality"], "CR");
    assert_eq!(o["patient_id"], "MRN12345");
    assert_eq!(o["study_instance_uid"], "1.2.840.113619.2.55.3.1001");
    assert_eq!(o["version"], 3);
    assert_eq!(o["fhir"]["resourceType"], "ServiceRequest");
    assert_eq!(o["fhir"]["subject"]["display"], "MARY O'BRIEN");
    let sr = get(&app, &format!("/fhir/r4/ServiceRequest/{}", o["id"].as_str().unwrap())).await;
    assert_eq!(sr["meta"]["versionId"], "3");
    let v1 = get(&app, &format!("/fhir/r4/ServiceRequest/{}/_history/1", o["id"].as_str().unwrap())).await;
    assert_eq!(v1["code"]["coding"][0]["code"], "71020", "version 1 is the NW as it was");
    // Escapes in OBR-13 (\T\ \S\) unescaped; OBR-31 is the coded reason.
    assert_eq!(sr["note"][0]["text"], "Clinical information: Cough & fever x3 days; WBC 14.2 x10^9/L; r/o pneumonia");
    assert_eq!(sr["reasonCode"][0]["coding"][0]["code"], "R05");
    assert_eq!(sr["reasonCode"][0]["coding"][0]["system"], "http://hl7.org/fhir/sid/icd-10");

    // OMI^O23: IPC and TQ1.
    let omi = order_by_accession(&app, "ACC3003").await;
    assert_eq!((omi["modality"].as_str(), omi["priority"].as_str()), (Some("CT"), Some("stat")));
    assert_eq!(omi["study_instance_uid"], "1.2.840.113619.2.55.3.3003");
    assert_eq!(omi["scheduled_at"], "2026-12-06T08:15:00Z");
    // Character sets: Latin-1 bytes (MSH-18 8859/1) and UTF-8.
    let latin1 = order_by_accession(&app, "ACC4004").await;
    assert_eq!(latin1["fhir"]["subject"]["display"], "Jürgen Müller");
    assert_eq!(latin1["ordering_provider"], "Inês Gonçalves");
    let utf8 = order_by_accession(&app, "ACC5005").await;
    assert_eq!(utf8["fhir"]["subject"]["display"], "Łukasz Wiśniewski");
    assert_eq!(order_by_accession(&app, "ACC6006").await["modality"], "US");

    // Order 1's report: preliminary → final → corrected, one report in three versions,
    // linked to its order and (by UID) to its study-to-be.
    let reports = get(&app, "/v1/radiology/reports?identifier=FIL1001").await;
    let report = &reports["items"][0];
    assert_eq!(reports["items"].as_array().unwrap().len(), 1, "{reports}");
    assert_eq!(report["status"], "corrected");
    assert_eq!(report["version"], 3);
    assert_eq!(report["order_id"], o["id"]);
    assert_eq!(report["critical"], false);
    let fhir = &report["fhir"];
    assert_eq!(fhir["basedOn"][0]["reference"], format!("ServiceRequest/{}", o["id"].as_str().unwrap()));
    assert!(fhir["conclusion"].as_str().unwrap().starts_with("IMPRESSION (CORRECTED)"), "{}", fhir["conclusion"]);
    let final_version = get(&app, &format!("/fhir/r4/DiagnosticReport/{}/_history/2", report["id"].as_str().unwrap())).await;
    assert_eq!(final_version["status"], "final");
    assert_eq!(final_version["conclusion"], "IMPRESSION: No acute cardiopulmonary process.");
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.decode(final_version["presentedForm"][0]["data"].as_str().unwrap()).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("EXAM: XR CHEST PA & LATERAL, 4 VIEWS") && text.contains("FINDINGS:\nLungs are clear."), "{text}");
    // The critical result (OBX-8 HH) for an order this service never received.
    let critical = get(&app, "/v1/radiology/reports?critical=true").await;
    assert_eq!(critical["items"].as_array().unwrap().len(), 1, "{critical}");
    assert_eq!(critical["items"][0]["fhir"]["identifier"][0]["value"], "FIL2002");
    assert!(critical["items"][0]["order_id"].is_null());

    // Everything emitted validates with an independent FHIR validator.
    let mut resources: Vec<Value> = get(&app, "/fhir/r4/ServiceRequest?_count=50").await["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    assert_eq!(resources.len(), 5);
    resources.extend(get(&app, "/fhir/r4/DiagnosticReport").await["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()));
    resources.push(final_version);
    validate_fhir(&resources);

    // The log holds every message, raw and parsed; another tenant sees none of it.
    let log = get(&app, "/v1/radiology/hl7-messages?limit=100").await;
    assert_eq!(log["items"].as_array().unwrap().len(), 11);
    assert!(log["items"].as_array().unwrap().iter().all(|m| m["status"] == "processed" && m["ack_code"] == "AA"));
    let latin1_msg = get(&app, "/v1/radiology/hl7-messages?control_id=RIS000401").await;
    let one = get(&app, &format!("/v1/radiology/hl7-messages/{}", latin1_msg["items"][0]["id"].as_str().unwrap())).await;
    assert!(one["raw"].as_str().unwrap().contains("Müller^Jürgen"), "raw decoded per MSH-18");
    assert_eq!(one["parsed"]["segments"][1]["id"], "PID");
    let other = app.token_for(app.other_tenant, &["radiology.admin"]);
    let r = app.get("/v1/radiology/hl7-messages", &other).await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 0);
    let r = app.get(&format!("/v1/radiology/orders/{}", o["id"].as_str().unwrap()), &other).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_messages_get_ae_or_ar_with_an_err_segment_and_are_kept() {
    let (url, dir) = crate::helpers::fresh_database().await;
    let app = TestApp::spawn_with(radiology::config::Config { data_dir: dir.path().into(), ..TestApp::config_for(&url) }).await;
    inbound_connector(&app).await;
    let cases = [
        ("bad_no_obr.hl7", "AE", "OBR", "100"),
        ("bad_missing_msh9.hl7", "AR", "MSH", "101"),
        ("bad_unsupported_type.hl7", "AR", "MSH", "200"),
        ("bad_unknown_sender.hl7", "AR", "MSH", "204"),
    ];
    for (fixture, code, segment, err_code) in cases {
        let Some(ack) = mllp_send(&app.mllp, fixture).await else { return };
        assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some(code), "{fixture}: {ack}");
        // v2.5+ ERR: ERR-2 location, ERR-3 code (HL7 table 0357); before: ERR-1 ELD.
        let version = ack_field(&ack, "MSH", 12, 1).unwrap_or_default();
        if version.starts_with("2.5") {
            assert_eq!(ack_field(&ack, "ERR", 2, 1).as_deref(), Some(segment), "{fixture}: {ack}");
            assert_eq!(ack_field(&ack, "ERR", 3, 1).as_deref(), Some(err_code), "{fixture}: {ack}");
        } else {
            assert_eq!(ack_field(&ack, "ERR", 1, 1).as_deref(), Some(segment), "{fixture}: {ack}");
            assert!(ack_field(&ack, "ERR", 1, 4).is_some_and(|c| c.starts_with(err_code)), "{fixture}: {ack}");
        }
    }
    // Bytes that are not HL7 at all, and a frame over the size cap, on one connection.
    let mut client = Client::connect(&app.mllp).await;
    let ack = client.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AR"), "{ack}");
    // A training message (MSH-11 T) does not touch production data.
    let training = String::from_utf8(orm("TRAIN-1", "PLT1", "ACCT1", "1.2.3.98")).unwrap().replace("|P|2.3.1", "|T|2.3.1");
    let ack = client.send(training.as_bytes()).await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AR"), "{ack}");
    assert!(ack_field(&ack, "ERR", 1, 4).is_some_and(|c| c.starts_with("202")), "{ack}");
    // … and the connection still takes a good message after them.
    let ack = client.send(&orm("OK-1", "PLOK1", "ACCOK1", "1.2.3.99")).await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");

    // The tenant's log keeps the bad messages it owns, raw, with the reason.
    let log = get(&app, "/v1/radiology/hl7-messages?limit=100").await;
    let by_control: std::collections::HashMap<&str, &Value> =
        log["items"].as_array().unwrap().iter().map(|m| (m["control_id"].as_str().unwrap_or(""), m)).collect();
    assert_eq!(by_control["RIS000902"]["status"], "error");
    assert!(by_control["RIS000902"]["error"].as_str().unwrap().contains("OBR"), "{}", by_control["RIS000902"]);
    assert_eq!(by_control["RIS000901"]["status"], "rejected");
    assert_eq!(by_control["RIS000904"]["status"], "rejected");
    assert!(!by_control.contains_key("OTH000903"), "an unknown sender belongs to no tenant");
    let errors = get(&app, "/v1/radiology/hl7-messages?status=error").await;
    assert_eq!(errors["items"].as_array().unwrap().len(), 1);
    let full = get(&app, &format!("/v1/radiology/hl7-messages/{}", by_control["RIS000902"]["id"].as_str().unwrap())).await;
    assert!(full["raw"].as_str().unwrap().contains("ORC|NW|PLC9902"));
    assert!(full["ack"].as_str().unwrap().contains("MSA|AE|RIS000902"));
    // Unrouted messages are kept too (under no tenant), for the operator.
    let unrouted: i64 = radiology::on_db!(&app.db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM hl7_messages WHERE tenant_id = $1")
        .bind(Uuid::nil()).fetch_one(pool).await).unwrap();
    assert_eq!(unrouted, 2, "the unknown sender and the non-HL7 bytes");
    // The operator sees who knocks without a connector.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_radiology"))
        .arg("hl7-unrouted")
        .env("RADIOLOGY_DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(listing.contains("OTHER_RIS") && listing.contains("OTH000903") && listing.contains("no inbound connector"), "{listing}");
    // Field errors of the connector API name their field.
    let r = app.post(CONNECTORS, &app.admin(), &json!({"direction": "outbound", "name": "x", "host": "h", "port": 0, "events": ["nope"]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text.contains("port") && r.text.contains("events[0]"), "{}", r.text);
    let r = app.post(CONNECTORS, &app.reader(), &json!({"direction": "inbound", "name": "x", "sending_application": "Y"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.post(CONNECTORS, &app.admin(), &json!({"direction": "inbound", "name": "again", "sending_application": "RIS", "sending_facility": "GENERAL_HOSP"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "one sender, one connector");
}

#[tokio::test]
async fn a_resent_message_gets_the_original_ack_and_a_reused_control_id_is_flagged() {
    let app = TestApp::spawn().await;
    inbound_connector(&app).await;
    let mut client = Client::connect(&app.mllp).await;
    let first = client.send(&orm("DUP-1", "PLD1", "ACCD1", "1.2.3.1")).await.unwrap();
    assert_eq!(ack_field(&first, "MSA", 1, 1).as_deref(), Some("AA"));
    // The same message again, on another connection: the very same ACK, applied once.
    let mut other = Client::connect(&app.mllp).await;
    let again = other.send(&orm("DUP-1", "PLD1", "ACCD1", "1.2.3.1")).await.unwrap();
    assert_eq!(again, first, "a duplicate gets the stored ACK, byte for byte");
    let o = order_by_accession(&app, "ACCD1").await;
    assert_eq!(o["version"], 1);
    // Re-sent with a new MSH-7 (some engines stamp the time again): still the same message.
    let restamped = String::from_utf8(orm("DUP-1", "PLD1", "ACCD1", "1.2.3.1")).unwrap().replace("20261205101500", "20261205101733");
    assert_eq!(other.send(restamped.as_bytes()).await.unwrap(), first);
    // Different content under the same control id: kept, flagged, not applied.
    let conflict = client.send(&orm("DUP-1", "PLD1", "ACCD1-CHANGED", "1.2.3.1")).await.unwrap();
    assert_eq!(ack_field(&conflict, "MSA", 1, 1).as_deref(), Some("AE"), "{conflict}");
    assert_eq!(order_by_accession(&app, "ACCD1").await["version"], 1, "not applied");
    let log = get(&app, "/v1/radiology/hl7-messages?control_id=DUP-1").await;
    let rows = log["items"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{log}");
    assert_eq!((rows[0]["status"].as_str(), rows[0]["duplicates"].as_i64()), (Some("processed"), Some(2)));
    assert_eq!(rows[1]["status"], "conflict");
    // A new order (NW) for an order stored already, under a new control id: applied to
    // the stored order, not a second one (unchanged, then a new version when it changes).
    let ack = client.send(&orm("DUP-2", "PLD1", "ACCD1", "1.2.3.1")).await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");
    assert_eq!(order_by_accession(&app, "ACCD1").await["version"], 1, "nothing changed");
    let ack = client.send(&orm("DUP-3", "PLD1", "ACCD1", "1.2.3.11")).await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");
    let o = order_by_accession(&app, "ACCD1").await;
    assert_eq!((o["version"].as_i64(), o["study_instance_uid"].as_str()), (Some(2), Some("1.2.3.11")), "{o}");
    // A refused message sent again gets its stored ACK too, and is logged once.
    let bad: String = String::from_utf8(orm("BAD-1", "PLB1", "ACCB1", "1.2.3.3")).unwrap().split_inclusive('\r').filter(|s| !s.starts_with("OBR|")).collect();
    let refused = client.send(bad.as_bytes()).await.unwrap();
    assert_eq!(ack_field(&refused, "MSA", 1, 1).as_deref(), Some("AE"), "{refused}");
    assert_eq!(other.send(bad.as_bytes()).await.unwrap(), refused, "the stored ACK, byte for byte");
    let log = get(&app, "/v1/radiology/hl7-messages?control_id=BAD-1").await;
    let bad_rows = log["items"].as_array().unwrap();
    assert_eq!(bad_rows.len(), 1, "{log}");
    assert_eq!((bad_rows[0]["status"].as_str(), bad_rows[0]["duplicates"].as_i64()), (Some("error"), Some(1)), "{log}");
    // Pipelined: three messages written at once are answered in order.
    let mut bytes = Vec::new();
    for i in 0..3 {
        bytes.extend(mllp::encode(&orm(&format!("PIPE-{i}"), &format!("PLP{i}"), &format!("ACCP{i}"), "1.2.3.2")));
    }
    client.socket.write_all(&bytes).await.unwrap();
    for i in 0..3 {
        let mut buf = [0u8; 4096];
        let ack = loop {
            if let Some(Frame::Message(a)) = client.decoder.next_frame() {
                break String::from_utf8_lossy(&a).into_owned();
            }
            let n = client.socket.read(&mut buf).await.unwrap();
            client.decoder.push(&buf[..n]);
        };
        assert_eq!(ack_field(&ack, "MSA", 2, 1), Some(format!("PIPE-{i}")));
    }
    // Reprocessing a stored message applies it again and records the outcome.
    let id = rows[0]["id"].as_str().unwrap();
    let r = app.post(&format!("/v1/radiology/hl7-messages/{id}/reprocess"), &app.admin(), &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["status"], "processed");
    let r = app.post(&format!("/v1/radiology/hl7-messages/{id}/reprocess"), &app.reader(), &json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// Several writers: the same message sent on six connections at once is applied once;
/// whichever copy a writer stores first is the original, the others meet the unique
/// index and get its ACK.
#[tokio::test]
async fn the_same_message_on_many_connections_at_once_is_applied_once() {
    let (url, dir) = crate::helpers::fresh_database().await;
    let app = TestApp::spawn_with(radiology::config::Config { data_dir: dir.path().into(), mllp_writers: 4, ..TestApp::config_for(&url) }).await;
    inbound_connector(&app).await;
    for round in 0..5 {
        let control = format!("SAME-{round}");
        let message = orm(&control, &format!("PLS{round}"), &format!("ACCS{round}"), &format!("1.2.3.5.{round}"));
        let sends = (0..6).map(|_| {
            let (addr, message) = (app.mllp.clone(), message.clone());
            tokio::spawn(async move { Client::connect(&addr).await.send(&message).await.unwrap() })
        });
        let acks: Vec<String> = futures_util::future::join_all(sends).await.into_iter().map(Result::unwrap).collect();
        for ack in &acks {
            assert_eq!(ack, &acks[0], "every copy gets the original's ACK");
        }
        assert_eq!(ack_field(&acks[0], "MSA", 1, 1).as_deref(), Some("AA"), "{}", acks[0]);
        assert_eq!(order_by_accession(&app, &format!("ACCS{round}")).await["version"], 1);
        let log = get(&app, &format!("/v1/radiology/hl7-messages?control_id={control}")).await;
        let rows = log["items"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{log}");
        assert_eq!((rows[0]["status"].as_str(), rows[0]["duplicates"].as_i64()), (Some("processed"), Some(5)), "{log}");
    }
}

/// A real `radiology serve` takes a stream of orders on four connections and is
/// killed with SIGKILL in the middle. Every message that got AA is stored; re-sending
/// everything after the restart applies the rest once and the acknowledged ones not again.
#[tokio::test]
async fn kill_9_mid_stream_loses_no_acknowledged_message_and_resending_is_deduplicated() {
    let (url, dir) = crate::helpers::fresh_database().await;
    let config = TestApp::config_for(&url);
    let app = TestApp::spawn_with(radiology::config::Config { data_dir: dir.path().into(), ..config.clone() }).await;
    inbound_connector(&app).await;
    let tenant = app.tenant;
    app.stop().await;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = [("RADIOLOGY_MLLP_ADDR", addr.as_str())];
    let mut child = spawn_serve(&url, dir.path(), &config, &env);
    let connect = || async {
        let start = Instant::now();
        loop {
            if let Ok(s) = TcpStream::connect(&addr).await {
                return Client { socket: s, decoder: Decoder::new(1 << 24) };
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the service did not open its MLLP port");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    const N: usize = 400;
    let message = |i: usize| orm(&format!("K9-{i:04}"), &format!("PLK{i}"), &format!("ACCK{i}"), &format!("1.2.826.0.1.{i}"));
    // Four senders, each its own slice, until the service dies under them.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for c in 0..4 {
        let mut client = connect().await;
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for i in (c..N).step_by(4) {
                match client.send(&message(i)).await {
                    Ok(ack) if ack_field(&ack, "MSA", 1, 1).as_deref() == Some("AA") => acked.lock().unwrap().push(i),
                    Ok(ack) => panic!("unexpected answer {ack}"),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good part is acknowledged.
    let start = Instant::now();
    while acked.lock().unwrap().len() < N / 4 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for s in senders {
        s.await.unwrap();
    }
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    assert!(acked.len() < N, "the kill came mid-stream ({} of {N} acknowledged)", acked.len());

    let app = TestApp::spawn_with(radiology::config::Config { data_dir: dir.path().into(), ..config.clone() }).await;
    let stored: Vec<String> = radiology::on_db!(&app.db, pool => sqlx::query_scalar(
        "SELECT control_id FROM hl7_messages WHERE tenant_id = $1 AND status = 'processed'").bind(tenant).fetch_all(pool).await).unwrap();
    let stored: std::collections::HashSet<String> = stored.into_iter().collect();
    for i in &acked {
        assert!(stored.contains(&format!("K9-{i:04}")), "message {i} got AA but is not stored");
    }
    // The sender re-sends everything it has no AA for, and some it has (it cannot know).
    let mut client = Client::connect(&app.mllp).await;
    for i in 0..N {
        let ack = client.send(&message(i)).await.unwrap();
        assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");
    }
    let (messages, orders, versions): (i64, i64, i64) = radiology::on_db!(&app.db, pool => async {
        let m = sqlx::query_scalar("SELECT COUNT(*) FROM hl7_messages WHERE tenant_id = $1").bind(tenant).fetch_one(pool).await.unwrap();
        let o = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE tenant_id = $1").bind(tenant).fetch_one(pool).await.unwrap();
        let v = sqlx::query_scalar("SELECT COUNT(*) FROM order_versions WHERE tenant_id = $1").bind(tenant).fetch_one(pool).await.unwrap();
        (m, o, v)
    }.await);
    assert_eq!((messages, orders, versions), (N as i64, N as i64, 0), "each message stored and applied exactly once");
    app.stop().await;
}

#[tokio::test]
async fn outbound_delivery_waits_out_a_ris_that_is_down_then_delivers_in_order() {
    let app = TestApp::spawn().await;
    inbound_connector(&app).await;
    let port = free_port();
    let r = app
        .post(
            CONNECTORS,
            &app.admin(),
            &json!({"direction": "outbound", "name": "RIS results", "host": "127.0.0.1", "port": port, "ack_timeout_ms": 3000,
                    "retry": {"initial_ms": 100, "max_ms": 400, "max_attempts": 3}, "events": ["report_final"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let outbound = r.json()["id"].as_str().unwrap().to_string();
    // Three final reports arrive while the RIS is down.
    let mut client = Client::connect(&app.mllp).await;
    let oru = |i: usize| {
        format!(
            "MSH|^~\\&|RIS|GENERAL_HOSP|RADIOLOGY|PLATFORM|20261205153000||ORU^R01^ORU_R01|OUT-{i}|P|2.5.1\r\
PID|1||MRN-OUT-{i}\r\
OBR|1|PLO{i}^EMR|FLO{i}^RIS|71030^CHEST^C4|||20261205141800|||||||||||ACCO{i}||||||CR|F\r\
OBX|1|TX|19005-8^Impression^LN|1|IMPRESSION: result {i}.||||||F\r"
        )
    };
    for i in 0..3 {
        let ack = client.send(oru(i).as_bytes()).await.unwrap();
        assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");
    }
    async fn outbox_of(app: &TestApp, connector: &str) -> Vec<Value> {
        get(app, &format!("{CONNECTORS}/{connector}/outbox")).await["items"].as_array().unwrap().clone()
    }

    wait_for("retries against the closed port", Duration::from_secs(20), async || {
        let items = outbox_of(&app, &outbound).await;
        items.len() == 3 && items[0]["attempts"].as_i64().unwrap() >= 2
    })
    .await;
    let items = outbox_of(&app, &outbound).await;
    assert!(items.iter().all(|i| i["status"] == "pending"));
    assert!(items[0]["last_error"].as_str().unwrap().contains("connect"), "{}", items[0]);
    assert_eq!(items[1]["attempts"], 0, "later entries wait for the first (order per destination)");

    // The RIS comes back; it refuses the first message (AE) and takes the rest.
    let record = tempfile::NamedTempFile::new().unwrap();
    let Some(ris) = Ris::start(port, 1, record.path()) else { return };
    wait_for("delivery", Duration::from_secs(30), async || outbox_of(&app, &outbound).await.iter().all(|i| i["status"] != "pending")).await;
    let items = outbox_of(&app, &outbound).await;
    let statuses: Vec<&str> = items.iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["nak", "acked", "acked"], "{items:?}");
    assert_eq!(items[0]["ack_code"], "AE");
    let got = ris.received();
    let control_ids: Vec<&str> = got.iter().map(|m| m["control_id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = items.iter().map(|i| i["control_id"].as_str().unwrap()).collect();
    assert_eq!(control_ids, expected, "delivered in outbox order, each once");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["type"], "ORU^R01^ORU_R01");
        assert!(m["raw"].as_str().unwrap().contains(&format!("IMPRESSION: result {i}.")), "{}", m["raw"]);
    }
    // The refused message is sent again on request, as it was (same MSH-10).
    let nak_seq = items[0]["seq"].as_i64().unwrap();
    let r = app.post(&format!("{CONNECTORS}/{outbound}/outbox/{nak_seq}/retry"), &app.reader(), &json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.post(&format!("{CONNECTORS}/{outbound}/outbox/{}/retry", items[1]["seq"]), &app.admin(), &json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "an acknowledged entry is not sent again");
    let r = app.post(&format!("{CONNECTORS}/{outbound}/outbox/{nak_seq}/retry"), &app.admin(), &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    wait_for("the resend", Duration::from_secs(20), async || outbox_of(&app, &outbound).await[0]["status"] == "acked").await;
    assert_eq!(ris.received()[3]["control_id"], items[0]["control_id"]);
    let other = app.token_for(app.other_tenant, &["radiology.admin"]);
    let r = app.post(&format!("{CONNECTORS}/{outbound}/outbox/{nak_seq}/retry"), &other, &json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A correction of a delivered report is a new event, delivered once more.
    let corrected = oru(1).replace("OUT-1|", "OUT-1C|").replace("|CR|F", "|CR|C").replace("||||||F", "||||||C");
    let ack = client.send(corrected.as_bytes()).await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"));
    wait_for("the correction", Duration::from_secs(20), async || {
        let items = outbox_of(&app, &outbound).await;
        items.len() == 4 && items[3]["status"] == "acked"
    })
    .await;
    assert!(ris.received()[4]["raw"].as_str().unwrap().contains("|C"), "OBR-25 C");
}

#[tokio::test]
async fn the_round_trip_check_shows_each_chain_and_names_the_broken_links() {
    let Some(orthanc) = Orthanc::from_env() else { return };
    let app = TestApp::spawn().await;
    let inbound = inbound_connector(&app).await;
    let inbound_id = inbound["id"].as_str().unwrap().to_string();
    // Order A goes the whole way: ORM, study on the PACS (synced), ORU final.
    let uid_a = format!("2.25.{}", Uuid::new_v4().as_u128());
    let uid_b = format!("2.25.{}", Uuid::new_v4().as_u128());
    let acc_a = format!("RTA{}", &Uuid::new_v4().simple().to_string()[..8]);
    let acc_b = format!("RTB{}", &Uuid::new_v4().simple().to_string()[..8]);
    let patient = format!("RT-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut client = Client::connect(&app.mllp).await;
    for (i, (acc, uid)) in [(&acc_a, &uid_a), (&acc_b, &uid_b)].into_iter().enumerate() {
        let ack = client.send(&orm(&format!("RT-ORM-{i}"), &format!("PL{acc}"), acc, uid)).await.unwrap();
        assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");
    }
    // A random time of day: studies piling up in one second of a long-lived PACS would
    // exceed its result cap for the sync tests.
    let time = || {
        let s = Uuid::new_v4().as_u128() % 86_400;
        format!("{:02}{:02}{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    orthanc.add_series(&uid_a, &patient, &acc_a, &chrono::Utc::now().format("%Y%m%d").to_string(), &time(), "CR", "CHEST").await;
    let endpoint = app.create_endpoint(&endpoint_body("orthanc", &orthanc.dicomweb_url(), &orthanc.user, &orthanc.password)).await;
    app.state.sync.run_until_idle().await.unwrap();
    let oru = format!(
        "MSH|^~\\&|RIS|GENERAL_HOSP|RADIOLOGY|PLATFORM|20261205153000||ORU^R01|RT-ORU-A|P|2.3.1\r\
PID|1||MRN-PL{acc_a}\r\
OBR|1|PL{acc_a}^EMR|FPL{acc_a}^RIS|71020^CHEST^C4|||20261205141800|||||||||||{acc_a}||||||CR|F\r\
OBX|1|TX|19005-8^Impression^LN|1|IMPRESSION: Normal.||||||F\r"
    );
    let ack = client.send(oru.as_bytes()).await.unwrap();
    assert_eq!(ack_field(&ack, "MSA", 1, 1).as_deref(), Some("AA"), "{ack}");
    // A result for an order nobody sent.
    let stray = oru.replace("RT-ORU-A", "RT-ORU-X").replace(&format!("PL{acc_a}"), "PLNOPE").replace(&acc_a, "ACCNOPE");
    client.send(stray.as_bytes()).await.unwrap();
    // The order's study is linked whichever came first.
    let a = order_by_accession(&app, &acc_a).await;
    assert_eq!(a["study"]["study_instance_uid"], uid_a.as_str());
    // … and the study names its order (ImagingStudy.basedOn).
    let study = get(&app, &format!("/fhir/r4/ImagingStudy/{}", a["study"]["id"].as_str().unwrap())).await;
    assert_eq!(study["basedOn"][0]["reference"], format!("ServiceRequest/{}", a["id"].as_str().unwrap()));
    validate_fhir(&[study, a["fhir"].clone()]);

    let run = |connector: String, body: Value| round_trip(&app, connector, body);
    let result = run(inbound_id.clone(), json!({})).await;
    assert_eq!(result["status"], "failed", "{result}");
    let chains = result["result"]["orders"]["chains"].as_array().unwrap();
    let chain = |acc: &str| chains.iter().find(|c| c["accession_number"] == acc).unwrap_or_else(|| panic!("{acc} in {chains:?}")).clone();
    let full = chain(&acc_a);
    assert_eq!(full["complete"], true, "{full}");
    assert_eq!(full["report"]["status"], "final");
    let broken = chain(&acc_b);
    assert_eq!(broken["complete"], false);
    let links = broken["broken_links"].as_array().unwrap();
    assert!(links.iter().any(|l| l.as_str().unwrap().starts_with("study:") && l.as_str().unwrap().contains(&uid_b)), "{links:?}");
    assert!(links.iter().any(|l| l.as_str().unwrap().starts_with("result:")), "{links:?}");
    let problems = result["result"]["message_problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["control_id"] == "RT-ORU-X"), "{problems:?}");

    // Outbound: the synthetic test order goes to the RIS and its ACK is verified.
    let record = tempfile::NamedTempFile::new().unwrap();
    let Some(ris) = Ris::start(0, 0, record.path()) else { return };
    let r = app
        .post(CONNECTORS, &app.admin(), &json!({"direction": "outbound", "name": "RIS orders", "host": "127.0.0.1", "port": ris.port, "events": ["study_available"]}))
        .await;
    let outbound = r.json()["id"].as_str().unwrap().to_string();
    let result = run(outbound, json!({"from": "2000-01-01"})).await;
    let test_order = &result["result"]["test_order"];
    assert_eq!(test_order["accepted"], true, "{result}");
    assert_eq!(test_order["ack_code"], "AA");
    let got = ris.received();
    assert!(got.iter().any(|m| m["control_id"] == test_order["control_id"] && m["raw"].as_str().unwrap().contains("ROUNDTRIP^TEST")), "{got:?}");

    // study_available: a study that arrives by sync is announced as ORM^O01, ORC-1 SC.
    let uid_c = format!("2.25.{}", Uuid::new_v4().as_u128());
    orthanc.add_series(&uid_c, &patient, "RTC-1", &chrono::Utc::now().format("%Y%m%d").to_string(), &time(), "CT", "CT HEAD").await;
    app.state.sync.run_until_idle().await.unwrap();
    let r = app.post(&format!("/v1/radiology/pacs-endpoints/{}/sync", endpoint["id"].as_str().unwrap()), &app.admin(), &json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    app.state.sync.run_until_idle().await.unwrap();
    wait_for("the study_available ORM", Duration::from_secs(20), async || {
        ris.received().iter().any(|m| m["raw"].as_str().unwrap().contains(&uid_c))
    })
    .await;
    let announced = ris.received().into_iter().find(|m| m["raw"].as_str().unwrap().contains(&uid_c)).unwrap();
    let raw = announced["raw"].as_str().unwrap();
    assert!(announced["type"].as_str().unwrap().starts_with("ORM^O01"), "{announced}");
    assert!(raw.contains("\rORC|SC|") && raw.contains("|RTC-1|"), "{raw}");
}

/// A CA and a server certificate for localhost/127.0.0.1, made with the openssl CLI.
fn test_certificates(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=radiology test CA", "-days", "2"]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "ris.key", "-out", "ris.csr", "-subj", "/CN=localhost"]);
    run(&["x509", "-req", "-in", "ris.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "ris.pem", "-days", "2", "-extfile", "san.ext"]);
    (std::fs::read_to_string(dir.join("ca.pem")).unwrap(), dir.join("ris.pem"), dir.join("ris.key"))
}

#[tokio::test]
async fn outbound_mllp_over_tls_checks_the_ris_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let record = dir.path().join("received.ndjson");
    let Some(python) = crate::helpers::peer_env("RADIOLOGY_TEST_HL7_PYTHON", "python-hl7 (the RIS peer)") else { return };
    let mut child = std::process::Command::new(python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hl7_ris.py"))
        .args(["--port", "0", "--record"])
        .arg(&record)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("LISTENING ").unwrap().parse().unwrap();
    let app = TestApp::spawn().await;
    let connector = |name: &str, tls: Value| json!({"direction": "outbound", "name": name, "host": "127.0.0.1", "port": port,
        "ack_timeout_ms": 5000, "events": ["report_final"], "tls": tls});
    let run = |id: String| {
        let app = &app;
        async move { round_trip(app, id, json!({})).await["result"]["test_order"].clone() }
    };
    // Trusting the test CA: the test order goes over TLS and is acknowledged.
    let r = app.post(CONNECTORS, &app.admin(), &connector("RIS tls", json!({"enabled": true, "ca_pem": ca, "server_name": "localhost"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let sent = run(r.json()["id"].as_str().unwrap().to_string()).await;
    assert_eq!(sent["accepted"], true, "{sent}");
    assert!(std::fs::read_to_string(&record).unwrap().contains("ROUNDTRIP^TEST"));
    // Without the CA, the RIS's certificate is not trusted: nothing is sent.
    let r = app.post(CONNECTORS, &app.admin(), &connector("RIS untrusted", json!({"enabled": true}))).await;
    let refused = run(r.json()["id"].as_str().unwrap().to_string()).await;
    assert_eq!(refused["accepted"], false, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("TLS"), "{refused}");
    // A bad TLS block names its field.
    let r = app.post(CONNECTORS, &app.admin(), &connector("bad", json!({"enabled": true, "ca_pem": "not a certificate"}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text.contains("tls.ca_pem"), "{}", r.text);
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts a round-trip check of a connector and waits until it is no longer running.
async fn round_trip(app: &TestApp, connector: String, body: Value) -> Value {
    let r = app.post(&format!("{CONNECTORS}/{connector}/round-trip"), &app.admin(), &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let location = r.header("location").unwrap().to_string();
    let mut result = Value::Null;
    wait_for("the round-trip run", Duration::from_secs(30), async || {
        result = get(app, &location).await;
        result["status"] != "running"
    })
    .await;
    result
}
