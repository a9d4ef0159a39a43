//! Inbound HL7: from the bytes of a frame to a stored, applied and acknowledged message.
//!
//! 1. [`Hl7Service::prepare`] parses the message, finds its connector (MSH-3/MSH-4 →
//!    tenant), checks MSH, and maps ORM^O01 / OMI^O23 to orders and ORU^R01 to reports.
//!    Anything wrong is decided here: AR for what cannot be taken at all (unknown
//!    sender, unsupported type, unreadable MSH), AE for a bad field.
//! 2. The writer ([`Hl7Service::spawn_writer`]) takes messages from every connection and
//!    stores them in groups (one transaction per tenant and kind): the log row and the
//!    orders or reports it applies commit together. Only then is the ACK sent, so a
//!    message that got AA is never lost; a message the store could not take gets AR
//!    (the sender sends it again).
//! 3. A message with the sender and control id (MSH-10) of a stored one is a duplicate
//!    when its content is the same: it gets the stored ACK and is not applied again.
//!    Different content under a used control id is kept, flagged `conflict`, answered
//!    AE (205) and not applied.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{FixedOffset, Utc};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::ack::{self, AckCode, AckError};
use super::message::{format_ts, is_latin1, Message};
use super::store::{enqueue_event, message_inserts, MessageRow};
use super::Hl7Service;
use crate::auth::TenantId;
use crate::db::sql::{AfterWrite, Followup, UpsertOutcome};
use crate::orders::from_hl7::error;
use crate::orders::OrderUpsert;
use crate::reports::from_hl7::{link_order, ResultReport};
use crate::reports::store::ReportUpsert;

/// The tenant of messages no connector claims (kept, never served by the API).
pub const UNROUTED: Uuid = Uuid::nil();

/// What applying a message means.
#[derive(Debug, Clone)]
pub enum Work {
    Orders(Vec<OrderUpsert>),
    Results(Vec<ResultReport>),
    /// Results linked to their orders and mapped to reports (ready to store).
    Reports(Vec<ReportUpsert>),
    /// Nothing to apply: the message was refused (its row says why).
    None,
}

/// How the sender wants to be answered (MSH-15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckMode {
    Original,
    /// Enhanced mode with MSH-15 AL, NE, ER or SU.
    Enhanced(String),
}

/// A message read and decided, waiting to be stored. A refused message has `Work::None`
/// and its row holds the status, the ACK and the reason.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub row: MessageRow,
    pub message: Option<Message>,
    pub work: Work,
    pub mode: AckMode,
}

impl Prepared {
    fn key(&self) -> Option<(Uuid, Uuid, String)> {
        Some((self.row.tenant_id, self.row.connector_id?, self.row.control_id.clone()?))
    }
}

/// The SHA-256 of the message bytes without MSH-7 (a sender may stamp a new time on a
/// message it sends again), hex.
pub fn content_hash(raw: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let msh_end = raw.iter().position(|b| *b == b'\r' || *b == b'\n').unwrap_or(raw.len());
    match (raw.starts_with(b"MSH"), raw.get(3)) {
        (true, Some(&sep)) => {
            // MSH-1 is the separator itself: in the raw split, MSH-7 is the 7th piece.
            for (i, piece) in raw[..msh_end].split(|b| *b == sep).enumerate() {
                if i > 0 {
                    ctx.update(&[sep]);
                }
                if i != 6 {
                    ctx.update(piece);
                }
            }
            ctx.update(&raw[msh_end..]);
        }
        _ => ctx.update(raw),
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh ACK control id (MSH-10 of our ACKs): unique, 20 characters.
pub fn new_control_id() -> String {
    format!("R{}", &Uuid::new_v4().simple().to_string()[..19])
}

/// The ACK bytes of `code` for `message` in the sender's character set, or `None` when
/// its enhanced-mode MSH-15 asks for no ACK in this case.
pub fn ack_bytes(message: Option<&Message>, mode: &AckMode, code: AckCode, error: Option<&AckError>) -> Option<Vec<u8>> {
    let code = match mode {
        AckMode::Original => code,
        AckMode::Enhanced(when) => {
            let commit = code.commit();
            let send = match when.as_str() {
                "NE" => false,
                "ER" => commit != AckCode::CA,
                "SU" => commit == AckCode::CA,
                _ => true,
            };
            if !send {
                return None;
            }
            commit
        }
    };
    let text = ack::build(message, code, error, &format_ts(Utc::now()), &new_control_id());
    let latin1 = message.is_some_and(|m| is_latin1(m.raw_field("MSH", 18).map(|f| f.split(m.separators.repetition).next().unwrap_or(""))));
    Some(if latin1 { text.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')).collect() } else { text.into_bytes() })
}

/// A message waiting for the writer, and where its ACK goes.
pub struct Job {
    pub prepared: Prepared,
    pub reply: oneshot::Sender<Option<Vec<u8>>>,
}

impl Hl7Service {
    /// Reads and decides one message (no database writes; the routing table is cached).
    pub async fn prepare(&self, raw: Vec<u8>, peer: Option<String>) -> Prepared {
        let now = crate::db::now();
        let mut row = MessageRow {
            id: Uuid::now_v7(), // time-ordered: new rows append at the primary key's right edge
            tenant_id: UNROUTED,
            connector_id: None,
            peer,
            message_type: None,
            control_id: None,
            version_id: None,
            sending_application: None,
            sending_facility: None,
            content_hash: content_hash(&raw),
            raw,
            status: "rejected".into(),
            ack_code: None,
            ack: None,
            error: None,
            order_id: None,
            report_id: None,
            duplicates: 0,
            received_at: now,
            processed_at: now,
        };
        let message = match Message::parse(&row.raw) {
            Ok(m) => m,
            Err(e) => {
                let err = error("MSH", 1, if matches!(e, super::message::ParseError::BadEncodingCharacters) { 2 } else { 0 }, 100, e.to_string());
                return refuse(row, None, AckMode::Original, AckCode::AR, err);
            }
        };
        row.sending_application = message.value("MSH", 3, 1);
        row.sending_facility = message.value("MSH", 4, 1);
        row.control_id = message.control_id();
        row.version_id = message.value("MSH", 12, 1);
        let (kind, event) = message.message_type();
        row.message_type = kind.as_ref().map(|k| match &event {
            Some(e) => format!("{k}^{e}"),
            None => k.clone(),
        });
        // Enhanced mode when MSH-15 or MSH-16 is valued; MSH-15 says when to send the
        // accept ACK (AL when only MSH-16 is given).
        let mode = match (message.value("MSH", 15, 1), message.value("MSH", 16, 1)) {
            (Some(m), _) if ["AL", "NE", "ER", "SU"].contains(&m.as_str()) => AckMode::Enhanced(m),
            (None, Some(_)) => AckMode::Enhanced("AL".into()),
            _ => AckMode::Original,
        };
        let app = row.sending_application.clone().unwrap_or_default();
        let facility = row.sending_facility.clone().unwrap_or_default();
        let Some(connector) = self.route(&app, &facility).await else {
            let err = error("MSH", 1, 3, 204, format!("no inbound connector receives from sending application {app:?} at facility {facility:?}"));
            return refuse(row, Some(message), mode, AckCode::AR, err);
        };
        row.tenant_id = connector.tenant_id;
        row.connector_id = Some(connector.id);
        if row.control_id.is_none() {
            return refuse(row, Some(message), mode, AckCode::AR, error("MSH", 1, 10, 101, "MSH-10 (message control id) is required"));
        }
        if !row.version_id.as_deref().is_some_and(|v| v.starts_with("2.")) {
            let v = row.version_id.clone().unwrap_or_default();
            return refuse(row, Some(message), mode, AckCode::AR, error("MSH", 1, 12, 203, format!("MSH-12 version {v:?} is not HL7 v2")));
        }
        // Only production messages change production data.
        match message.value("MSH", 11, 1).as_deref() {
            Some("P") => {}
            other => {
                let p = other.unwrap_or("").to_string();
                return refuse(row, Some(message), mode, AckCode::AR, error("MSH", 1, 11, 202, format!(
                    "processing id {p:?} is not taken: only P (production) messages are applied")));
            }
        }
        let offset = self.settings.default_offset;
        let work = match (kind.as_deref(), event.as_deref()) {
            (None, _) => return refuse(row, Some(message), mode, AckCode::AR, error("MSH", 1, 9, 101, "MSH-9 (message type) is required")),
            (Some("ORM"), Some("O01")) | (Some("OMI"), Some("O23")) => match crate::orders::from_hl7::orders(&message, offset) {
                Ok(mut orders) => {
                    for o in &mut orders {
                        o.fields.facility_id = connector.facility_id;
                    }
                    Work::Orders(orders)
                }
                Err(e) => return refuse(row, Some(message), mode, AckCode::AE, e),
            },
            (Some("ORU"), Some("R01")) => match crate::reports::from_hl7::results(&message, offset) {
                Ok(results) => Work::Results(results),
                Err(e) => return refuse(row, Some(message), mode, AckCode::AE, e),
            },
            (Some("ORM" | "OMI" | "ORU"), e) => {
                let e = e.unwrap_or("");
                return refuse(row, Some(message), mode, AckCode::AR, error("MSH", 1, 9, 201, format!("trigger event {e:?} is not taken for this message type (ORM^O01, OMI^O23, ORU^R01)")));
            }
            (Some(k), _) => {
                return refuse(row, Some(message), mode, AckCode::AR, error("MSH", 1, 9, 200, format!("message type {k:?} is not taken (ORM^O01, OMI^O23, ORU^R01)")));
            }
        };
        Prepared { row, message: Some(message), work, mode }
    }

    /// The connector of a sender; the table is reloaded every few seconds, and at once
    /// (at most once a second) for a sender it does not know.
    async fn route(&self, app: &str, facility: &str) -> Option<super::connectors::ConnectorRow> {
        let key = (app.to_string(), facility.to_string());
        let fresh = |loaded: Option<std::time::Instant>, secs: u64| loaded.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(secs));
        {
            let routes = self.routes.read().await;
            if fresh(routes.0, 5) {
                if let Some(c) = routes.1.get(&key) {
                    return Some(c.clone());
                }
                if fresh(routes.0, 1) {
                    return None;
                }
            }
        }
        let mut routes = self.routes.write().await;
        if !fresh(routes.0, 1) {
            match self.store.inbound_routes().await {
                Ok(rows) => {
                    routes.1 = rows
                        .into_iter()
                        .map(|c| ((c.sending_application.clone().unwrap_or_default(), c.sending_facility.clone().unwrap_or_default()), c))
                        .collect();
                    routes.0 = Some(std::time::Instant::now());
                }
                Err(e) => tracing::warn!(error.cause_chain = ?e, "could not reload the HL7 connector routes"),
            }
        }
        routes.1.get(&key).cloned()
    }

    /// Forgets the routing table (after a connector changed).
    pub async fn reload_routes(&self) {
        self.routes.write().await.0 = None;
    }

    /// Starts the writer; messages go to it through [`Hl7Service::submit`].
    pub fn spawn_writer(self: &Arc<Self>, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let max = service.settings.batch_max.max(1);
            let mut carried: Vec<Job> = Vec::new();
            loop {
                let mut batch = std::mem::take(&mut carried);
                // One writer at a time waits on the queue; it takes what is there and
                // lets the next free writer wait. A writer with messages carried over
                // does not wait for the queue (another writer may be waiting on it for
                // new messages): it adds what it can take at once.
                let mut rx = if batch.is_empty() {
                    queue.lock().await
                } else {
                    match queue.try_lock() {
                        Ok(rx) => rx,
                        Err(_) => {
                            carried = service.write_batch(batch).await;
                            continue;
                        }
                    }
                };
                if batch.is_empty() {
                    // On shutdown, messages still queued are stored first; a message
                    // submitted after the writer ended is answered AR.
                    let job = tokio::select! {
                        biased;
                        job = rx.recv() => job,
                        _ = super::stopped(&mut stop) => {
                            let grace = tokio::time::sleep(std::time::Duration::from_millis(200));
                            tokio::pin!(grace);
                            tokio::select! { job = rx.recv() => job, _ = &mut grace => None }
                        }
                    };
                    match job {
                        Some(job) => batch.push(job),
                        None => return,
                    }
                }
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                drop(rx);
                carried = service.write_batch(batch).await;
            }
        })
    }

    /// Stores a message and waits for its ACK (`None`: the sender asked for none).
    pub async fn submit(&self, prepared: Prepared) -> Option<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        let fallback = ack_bytes(prepared.message.as_ref(), &prepared.mode, AckCode::AR, Some(&error("MSH", 1, 0, 207, "the service is shutting down; send the message again")));
        if self.queue.send(Job { prepared, reply }).await.is_err() {
            return fallback;
        }
        answer.await.unwrap_or(fallback)
    }

    /// Stores one batch; returns the jobs that must wait for the next batch (a second
    /// message with the same sender and control id as one in this batch).
    ///
    /// First pass: no duplicate check. A control id stored before makes the insert of
    /// its group meet the unique index (`hl7_messages_control_once`); that group is
    /// rolled back, and its messages take the second pass, which looks up the stored
    /// messages and answers duplicates with their stored ACK.
    async fn write_batch(&self, batch: Vec<Job>) -> Vec<Job> {
        let mut later = Vec::new();
        let mut seen = HashSet::new();
        let mut jobs = Vec::new();
        for job in batch {
            match job.prepared.key() {
                Some(k) if !seen.insert(k.clone()) => later.push(job),
                _ => jobs.push(job),
            }
        }
        let recheck = self.store_jobs(jobs, false).await;
        if !recheck.is_empty() {
            for job in self.store_jobs(recheck, true).await {
                let _ = job.reply.send(store_failed(&job.prepared));
            }
        }
        later
    }

    /// One pass of [`Hl7Service::write_batch`]; returns the messages to check again.
    async fn store_jobs(&self, jobs: Vec<Job>, checked: bool) -> Vec<Job> {
        let mut recheck = Vec::new();
        if !checked {
            let (apply, log_only): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| !matches!(j.prepared.work, Work::None));
            self.apply_all(apply, log_only, false, &mut recheck).await;
            return recheck;
        }
        let keys: Vec<(Uuid, Uuid, String)> = jobs.iter().filter_map(|j| j.prepared.key()).collect();
        let priors = match self.store.prior_messages(&keys).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error.cause_chain = ?e, "HL7 duplicate check failed; answering AR");
                for job in jobs {
                    let _ = job.reply.send(store_failed(&job.prepared));
                }
                return recheck;
            }
        };
        let mut duplicates = Vec::new();
        let mut apply: Vec<Job> = Vec::new();
        let mut log_only: Vec<Job> = Vec::new();
        for mut job in jobs {
            let same_key: Vec<_> = match job.prepared.key() {
                Some((t, c, id)) => priors.iter().filter(|p| p.tenant_id == t && p.connector_id == Some(c) && p.control_id.as_deref() == Some(&id)).collect(),
                None => Vec::new(),
            };
            if let Some(original) = same_key.iter().find(|p| p.content_hash == job.prepared.row.content_hash) {
                duplicates.push((original.id, job, original.ack.clone()));
                continue;
            }
            if let Some(first) = same_key.first() {
                let p = &mut job.prepared;
                let err = error("MSH", 1, 10, 205, format!(
                    "control id {:?} was already used by this sender on {} for a different message; this one is kept but not applied",
                    p.row.control_id.as_deref().unwrap_or(""), first.received_at.to_rfc3339()));
                p.work = Work::None;
                p.row.status = "conflict".into();
                set_refusal(p, AckCode::AE, err);
                log_only.push(job);
                continue;
            }
            match job.prepared.work {
                Work::None => log_only.push(job),
                _ => apply.push(job),
            }
        }
        if !duplicates.is_empty() {
            // Counted before the answers go: a sender that reads the log after its ACK
            // sees its copy counted.
            let originals: Vec<Uuid> = duplicates.iter().map(|d| d.0).collect();
            if let Err(e) = self.store.count_duplicates(&originals).await {
                tracing::warn!(error.cause_chain = ?e, "could not count duplicate HL7 messages");
            }
            for (_, job, ack) in duplicates {
                self.metrics.observe_hl7_message(job.prepared.row.message_type.as_deref(), "duplicate");
                let _ = job.reply.send(ack);
            }
        }
        self.apply_all(apply, log_only, true, &mut recheck).await;
        recheck
    }

    /// Applies and stores messages (orders first: a result in the same batch as its
    /// order finds it), then stores the refused ones; answers each once it is stored.
    async fn apply_all(&self, apply: Vec<Job>, mut log_only: Vec<Job>, checked: bool, recheck: &mut Vec<Job>) {
        let (orders, results): (Vec<Job>, Vec<Job>) = apply.into_iter().partition(|j| matches!(j.prepared.work, Work::Orders(_)));
        for wave in waves(orders) {
            self.apply_orders(wave, &mut log_only, checked, recheck).await;
        }
        for wave in self.link_results(results, &mut log_only).await {
            self.apply_results(wave, &mut log_only, checked, recheck).await;
        }
        if log_only.is_empty() {
            return;
        }
        let rows: Vec<MessageRow> = log_only.iter().map(|j| j.prepared.row.clone()).collect();
        let stored = self.store.insert_messages(&rows).await;
        match &stored {
            Err(crate::db::StoreError::Fenced) if !checked => {
                recheck.extend(log_only);
                return;
            }
            Err(e) => tracing::error!(error.cause_chain = ?e, "could not store refused HL7 messages; answering AR"),
            Ok(()) => {}
        }
        for job in log_only {
            self.metrics.observe_hl7_message(job.prepared.row.message_type.as_deref(), &job.prepared.row.status);
            let ack = if stored.is_ok() { job.prepared.row.ack.clone() } else { store_failed(&job.prepared) };
            let _ = job.reply.send(ack);
        }
    }

    async fn apply_orders(&self, wave: Vec<Job>, log_only: &mut Vec<Job>, checked: bool, recheck: &mut Vec<Job>) {
        let tenant = TenantId(wave[0].prepared.row.tenant_id);
        let mut upserts = Vec::new();
        let mut spans = Vec::new();
        for job in &wave {
            let Work::Orders(orders) = &job.prepared.work else { unreachable!("an order wave") };
            spans.push((upserts.len(), orders.len()));
            upserts.extend(orders.iter().cloned());
        }
        let mut rows: Vec<MessageRow> = wave.iter().map(|j| accepted(&j.prepared)).collect();
        let db = self.db.clone();
        let followups = |outcomes: &[UpsertOutcome]| -> Vec<Followup> {
            let mut rows = rows.clone();
            for (row, (start, _)) in rows.iter_mut().zip(&spans) {
                row.order_id = outcomes.get(*start).map(UpsertOutcome::id);
            }
            message_inserts(&db, &rows)
        };
        let result = crate::db::error::retry_transient(|| self.orders.upsert_batch(tenant, &upserts, Some(AfterWrite { followups: &followups, gate: None, insert_first: false }))).await;
        match result {
            Ok(outcomes) => {
                for (row, (start, _)) in rows.iter_mut().zip(&spans) {
                    row.order_id = outcomes.get(*start).map(UpsertOutcome::id);
                }
                self.answer_processed(wave, rows);
            }
            Err(crate::db::StoreError::Fenced) if !checked => recheck.extend(wave),
            Err(e) if wave.len() > 1 => {
                // One message may be the cause: each is tried on its own.
                tracing::warn!(error.cause_chain = ?e, messages = wave.len(), "an HL7 order group failed; applying its messages one by one");
                for job in wave {
                    Box::pin(self.apply_orders(vec![job], log_only, checked, recheck)).await;
                }
            }
            Err(e) => self.failed_wave(wave, e),
        }
    }

    /// Finds each result's order, maps it to a report upsert, and groups the results in
    /// waves of distinct reports. A result whose report cannot be built is refused (AE).
    async fn link_results(&self, jobs: Vec<Job>, log_only: &mut Vec<Job>) -> Vec<Vec<Job>> {
        // Results mapped already (checked again after a first pass) keep their reports.
        let (done, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| matches!(j.prepared.work, Work::Reports(_)));
        let mut ready = Vec::new();
        for mut job in jobs {
            let tenant = TenantId(job.prepared.row.tenant_id);
            let Work::Results(results) = &mut job.prepared.work else { unreachable!("results") };
            let mut failure = None;
            for r in results.iter_mut() {
                match self.orders.find_for_result(tenant, &r.order_keys, r.filler_number.as_deref(), r.accession_number.as_deref()).await {
                    Ok(Some(order)) => {
                        link_order(r, order.id, order.study_uid.as_deref());
                        job.prepared.row.order_id = job.prepared.row.order_id.or(Some(order.id));
                    }
                    Ok(None) => {}
                    Err(e) => failure = Some(format!("the order of this result could not be looked up: {e}")),
                }
            }
            if let Some(text) = failure {
                tracing::error!(%text, "HL7 result not applied");
                let _ = job.reply.send(store_failed(&job.prepared));
                continue;
            }
            ready.push(job);
        }
        let mut mapped = Vec::new();
        for mut job in done {
            let Work::Reports(upserts) = std::mem::replace(&mut job.prepared.work, Work::None) else { unreachable!("reports") };
            mapped.push((job, upserts));
        }
        for mut job in ready {
            let Work::Results(results) = &job.prepared.work else { unreachable!("results") };
            let mut upserts = Vec::new();
            let mut issue = None;
            for r in results {
                match crate::reports::from_fhir::map(r.resource.clone()) {
                    Ok(mut u) => {
                        u.critical = Some(r.critical);
                        u.order_id = r.order_id;
                        upserts.push(u);
                    }
                    Err(issues) => issue = issues.first().map(|i| format!("{}: {}", i.expression, i.message)),
                }
            }
            if let Some(text) = issue {
                let p = &mut job.prepared;
                p.work = Work::None;
                p.row.status = "error".into();
                set_refusal(p, AckCode::AE, error("OBR", 1, 0, 207, format!("the result could not be stored as a report: {text}")));
                log_only.push(job);
                continue;
            }
            mapped.push((job, upserts));
        }
        // waves of distinct report keys per tenant
        let mut waves: Vec<(Uuid, HashSet<String>, Vec<Job>)> = Vec::new();
        for (mut job, upserts) in mapped {
            let upserts = last_per_key(upserts, |u| u.business_key.clone());
            let keys: HashSet<String> = upserts.iter().map(|u| u.business_key.clone()).collect();
            job.prepared.work = Work::Reports(upserts);
            let tenant = job.prepared.row.tenant_id;
            place(&mut waves, tenant, keys, job);
        }
        waves.into_iter().map(|w| w.2).collect()
    }

    async fn apply_results(&self, wave: Vec<Job>, log_only: &mut Vec<Job>, checked: bool, recheck: &mut Vec<Job>) {
        let tenant = TenantId(wave[0].prepared.row.tenant_id);
        let mut upserts: Vec<ReportUpsert> = Vec::new();
        let mut spans = Vec::new();
        for job in &wave {
            let Work::Reports(list) = &job.prepared.work else { unreachable!("a report wave") };
            spans.push((upserts.len(), list.len()));
            upserts.extend(list.iter().cloned());
        }
        let mut rows: Vec<MessageRow> = wave.iter().map(|j| accepted(&j.prepared)).collect();
        let db = self.db.clone();
        let followups = |outcomes: &[UpsertOutcome]| -> Vec<Followup> {
            let mut rows = rows.clone();
            for (row, (start, _)) in rows.iter_mut().zip(&spans) {
                row.report_id = outcomes.get(*start).map(UpsertOutcome::id);
            }
            let mut f = message_inserts(&db, &rows);
            let changed: Vec<Uuid> = outcomes.iter().filter(|o| !matches!(o, UpsertOutcome::Unchanged(_))).map(UpsertOutcome::id).collect();
            f.extend(enqueue_event(tenant, "report_final", "DiagnosticReport", "diagnostic_reports", &changed, false,
                "AND r.status IN ('final', 'amended', 'corrected', 'appended')"));
            f
        };
        match crate::db::error::retry_transient(|| self.reports.upsert_batch(tenant, &upserts, Some(AfterWrite { followups: &followups, gate: None, insert_first: false }))).await {
            Ok(outcomes) => {
                for (row, (start, _)) in rows.iter_mut().zip(&spans) {
                    row.report_id = outcomes.get(*start).map(UpsertOutcome::id);
                }
                self.answer_processed(wave, rows);
            }
            Err(crate::db::StoreError::Fenced) if !checked => recheck.extend(wave),
            Err(e) if wave.len() > 1 => {
                tracing::warn!(error.cause_chain = ?e, messages = wave.len(), "an HL7 result group failed; applying its messages one by one");
                for job in wave {
                    Box::pin(self.apply_results(vec![job], log_only, checked, recheck)).await;
                }
            }
            Err(e) => self.failed_wave(wave, e),
        }
    }

    /// Answers each message of a committed wave with the ACK stored in its log row.
    fn answer_processed(&self, wave: Vec<Job>, rows: Vec<MessageRow>) {
        for (job, row) in wave.into_iter().zip(rows) {
            self.metrics.observe_hl7_message(row.message_type.as_deref(), "processed");
            let _ = job.reply.send(row.ack);
        }
    }

    /// A message the store could not take (database down, a concurrent writer, another
    /// process that stored it first): nothing of it is kept, and it is answered AR so
    /// that the sender sends it again (a re-sent message already stored elsewhere then
    /// gets its stored ACK).
    fn failed_wave(&self, wave: Vec<Job>, e: crate::db::StoreError) {
        tracing::error!(error.cause_chain = ?e, messages = wave.len(), "HL7 message not stored; answered AR");
        for job in wave {
            self.metrics.observe_hl7_message(job.prepared.row.message_type.as_deref(), "not_stored");
            let _ = job.reply.send(store_failed(&job.prepared));
        }
    }

    /// Applies a stored message again (after the cause of its failure was fixed), and
    /// records the new outcome on its log row. A duplicate check does not apply: the
    /// operator asked for it.
    pub async fn reprocess(&self, tenant: TenantId, id: Uuid) -> Result<MessageRow, crate::db::StoreError> {
        let stored = self.store.get_message(tenant, id).await?;
        let mut prepared = self.prepare(stored.raw.clone(), stored.peer.clone()).await;
        if prepared.row.tenant_id != tenant.0 {
            // The sender is now routed elsewhere (or nowhere): refuse, keep the row.
            prepared.work = Work::None;
            set_refusal(&mut prepared, AckCode::AR, error("MSH", 1, 3, 204, "the message's sender no longer belongs to this tenant's connectors"));
        }
        let mut row = stored.clone();
        row.processed_at = crate::db::now();
        match &prepared.work {
            Work::None | Work::Reports(_) => {
                row.status = if stored.status == "conflict" { "conflict".into() } else { prepared.row.status.clone() };
                row.ack_code = prepared.row.ack_code.clone();
                row.ack = prepared.row.ack.clone();
                row.error = prepared.row.error.clone();
            }
            Work::Orders(orders) => {
                let outcomes = self.orders.upsert_batch(tenant, orders, None).await?;
                row.status = if stored.status == "conflict" { "conflict".into() } else { "processed".into() };
                row.order_id = outcomes.first().map(UpsertOutcome::id);
                row.error = None;
                let a = accepted(&prepared);
                row.ack_code = a.ack_code;
                row.ack = a.ack;
            }
            Work::Results(results) => {
                let mut upserts = Vec::new();
                for r in results {
                    let mut r = r.clone();
                    let order = self.orders.find_for_result(tenant, &r.order_keys, r.filler_number.as_deref(), r.accession_number.as_deref()).await?;
                    if let Some(o) = &order {
                        link_order(&mut r, o.id, o.study_uid.as_deref());
                        row.order_id = row.order_id.or(Some(o.id));
                    }
                    let mut u = crate::reports::from_fhir::map(r.resource.clone())
                        .map_err(|i| crate::db::StoreError::Other(anyhow::anyhow!("the result is not a valid report: {:?}", i.first())))?;
                    u.critical = Some(r.critical);
                    u.order_id = order.map(|o| o.id);
                    upserts.push(u);
                }
                let followups = |outcomes: &[UpsertOutcome]| -> Vec<Followup> {
                    let changed: Vec<Uuid> = outcomes.iter().filter(|o| !matches!(o, UpsertOutcome::Unchanged(_))).map(UpsertOutcome::id).collect();
                    enqueue_event(tenant, "report_final", "DiagnosticReport", "diagnostic_reports", &changed, false,
                        "AND r.status IN ('final', 'amended', 'corrected', 'appended')").into_iter().collect()
                };
                let outcomes = self.reports.upsert_batch(tenant, &upserts, Some(AfterWrite { followups: &followups, gate: None, insert_first: false })).await?;
                row.status = if stored.status == "conflict" { "conflict".into() } else { "processed".into() };
                row.report_id = outcomes.first().map(UpsertOutcome::id);
                row.error = None;
                let a = accepted(&prepared);
                row.ack_code = a.ack_code;
                row.ack = a.ack;
            }
        }
        self.store.record_reprocess(tenant, &row).await?;
        Ok(row)
    }
}

/// Groups order messages into waves whose orders are distinct per tenant (a batch
/// upsert takes each key once); a message's orders stay together.
fn waves(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut waves: Vec<(Uuid, HashSet<String>, Vec<Job>)> = Vec::new();
    for mut job in jobs {
        let Work::Orders(orders) = std::mem::replace(&mut job.prepared.work, Work::None) else { continue };
        let orders = last_per_key(orders, |o| o.business_key.clone());
        let keys: HashSet<String> = orders.iter().map(|o| o.business_key.clone()).collect();
        job.prepared.work = Work::Orders(orders);
        let tenant = job.prepared.row.tenant_id;
        place(&mut waves, tenant, keys, job);
    }
    waves.into_iter().map(|w| w.2).collect()
}

/// Puts a message in the first group after the last one that shares a key with it, so
/// that messages about the same order or report apply in the order they came.
fn place(waves: &mut Vec<(Uuid, HashSet<String>, Vec<Job>)>, tenant: Uuid, keys: HashSet<String>, job: Job) {
    let after = waves.iter().rposition(|(t, k, _)| *t == tenant && !k.is_disjoint(&keys)).map_or(0, |i| i + 1);
    match waves.iter_mut().skip(after).find(|(t, _, _)| *t == tenant) {
        Some((_, k, list)) => {
            k.extend(keys);
            list.push(job);
        }
        None => waves.push((tenant, keys, vec![job])),
    }
}

/// One item per key, the last one given (a message naming the same order or report
/// twice means its last word).
fn last_per_key<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        let k = key(&item);
        match out.iter().position(|o| key(o) == k) {
            Some(i) => out[i] = item,
            None => out.push(item),
        }
    }
    out
}

/// The log row of a message that applied: `processed`, with its AA (or CA) ACK.
fn accepted(p: &Prepared) -> MessageRow {
    let mut row = p.row.clone();
    row.status = "processed".into();
    row.ack_code = Some(match p.mode {
        AckMode::Original => "AA".into(),
        AckMode::Enhanced(_) => "CA".into(),
    });
    row.ack = ack_bytes(p.message.as_ref(), &p.mode, AckCode::AA, None);
    row.error = None;
    row.processed_at = crate::db::now();
    row
}

fn set_refusal(p: &mut Prepared, code: AckCode, err: AckError) {
    let sent = match p.mode {
        AckMode::Original => code,
        AckMode::Enhanced(_) => code.commit(),
    };
    p.row.ack_code = Some(sent.as_str().into());
    p.row.ack = ack_bytes(p.message.as_ref(), &p.mode, code, Some(&err));
    p.row.error = Some(format!("{}-{}: {}", err.segment, err.field, err.text));
}

fn refuse(mut row: MessageRow, message: Option<Message>, mode: AckMode, code: AckCode, err: AckError) -> Prepared {
    row.status = if code == AckCode::AR { "rejected".into() } else { "error".into() };
    let mut p = Prepared { row, message, work: Work::None, mode };
    set_refusal(&mut p, code, err);
    p
}

/// The answer when a message could not be stored: AR (send it again).
fn store_failed(p: &Prepared) -> Option<Vec<u8>> {
    ack_bytes(p.message.as_ref(), &p.mode, AckCode::AR, Some(&error("MSH", 1, 0, 207, "the message could not be stored; send it again")))
}

/// The default UTC offset of HL7 timestamps from `+HH:MM`.
pub fn parse_offset(text: &str) -> anyhow::Result<FixedOffset> {
    crate::studies::mapping::parse_offset(&text.replace(':', "")).ok_or_else(|| anyhow::anyhow!("hl7_default_utc_offset {text:?} is not +HH:MM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_hash_ignores_msh_7_only() {
        let a = content_hash(b"MSH|^~\\&|RIS|H|||20261205101500||ORM^O01|C1|P|2.3.1\rPID|1||X\r");
        let b = content_hash(b"MSH|^~\\&|RIS|H|||20261205999999||ORM^O01|C1|P|2.3.1\rPID|1||X\r");
        let c = content_hash(b"MSH|^~\\&|RIS|H|||20261205101500||ORM^O01|C1|P|2.3.1\rPID|1||Y\r");
        let d = content_hash(b"MSH|^~\\&|RIS|H|||20261205101500||ORM^O01|C2|P|2.3.1\rPID|1||X\r");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(content_hash(b"garbage").len(), 64);
    }

    #[test]
    fn enhanced_mode_sends_the_accept_ack_msh_15_asks_for() {
        let m = Message::parse(b"MSH|^~\\&|RIS|H|||2026||ORM^O01|C1|P|2.5.1|||ER|AL\r").unwrap();
        let er = AckMode::Enhanced("ER".into());
        assert!(ack_bytes(Some(&m), &er, AckCode::AA, None).is_none(), "ER: nothing on success");
        let ce = ack_bytes(Some(&m), &er, AckCode::AE, Some(&error("PID", 1, 3, 101, "x"))).unwrap();
        assert!(String::from_utf8(ce).unwrap().contains("MSA|CE|C1"));
        assert!(ack_bytes(Some(&m), &AckMode::Enhanced("NE".into()), AckCode::AE, None).is_none());
        let ca = ack_bytes(Some(&m), &AckMode::Enhanced("AL".into()), AckCode::AA, None).unwrap();
        assert!(String::from_utf8(ca).unwrap().contains("MSA|CA|C1"));
    }
}
