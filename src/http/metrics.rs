//! Prometheus text metrics: HTTP requests by route and status, a latency histogram by
//! route, and database pool gauges. Small and dependency-free on purpose.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::db::Db;

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    sync_runs: Mutex<BTreeMap<&'static str, u64>>,
    sync_studies: Mutex<BTreeMap<&'static str, u64>>,
    import_jobs: Mutex<BTreeMap<&'static str, u64>>,
    import_resources: Mutex<BTreeMap<(String, &'static str), u64>>,
    hl7_messages: Mutex<BTreeMap<(String, String), u64>>,
    hl7_outbound: Mutex<BTreeMap<String, u64>>,
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        *self.requests.lock().unwrap().entry((method.into(), route.into(), status)).or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        let mut latency = self.latency.lock().unwrap();
        let h = latency.entry((method.into(), route.into())).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Counts one finished QIDO-RS sync run (no tenant or endpoint labels: those are in
    /// the sync API, and label sets here stay small).
    pub fn observe_sync_run(&self, ok: bool, seen: i64, created: i64, updated: i64, failed: i64) {
        *self.sync_runs.lock().unwrap().entry(if ok { "ok" } else { "failed" }).or_default() += 1;
        let mut studies = self.sync_studies.lock().unwrap();
        for (outcome, n) in [("seen", seen), ("created", created), ("updated", updated), ("failed", failed)] {
            *studies.entry(outcome).or_default() += n.max(0) as u64;
        }
    }

    /// Counts one ended import job by result (completed, failed, retried, cancelled).
    pub fn observe_import_job(&self, result: &'static str) {
        *self.import_jobs.lock().unwrap().entry(result).or_default() += 1;
    }

    /// Counts the resources of one stored import batch by type and outcome.
    pub fn observe_import_batch(&self, resource_type: &str, created: i64, updated: i64, unchanged: i64, failed: i64) {
        let mut m = self.import_resources.lock().unwrap();
        for (outcome, n) in [("created", created), ("updated", updated), ("unchanged", unchanged), ("failed", failed)] {
            if n > 0 {
                *m.entry((resource_type.to_string(), outcome)).or_default() += n as u64;
            }
        }
    }

    /// Counts one inbound HL7 message by type (ORM^O01, …) and outcome (processed,
    /// error, rejected, conflict, duplicate).
    pub fn observe_hl7_message(&self, message_type: Option<&str>, status: &str) {
        let kind = match message_type {
            Some(t @ ("ORM^O01" | "OMI^O23" | "ORU^R01")) => t,
            Some(_) => "other",
            None => "unreadable",
        };
        *self.hl7_messages.lock().unwrap().entry((kind.to_string(), status.to_string())).or_default() += 1;
    }

    /// Counts one outbound delivery attempt by outcome (acked, nak, failed, retry).
    pub fn observe_hl7_outbound(&self, outcome: &str) {
        *self.hl7_outbound.lock().unwrap().entry(outcome.to_string()).or_default() += 1;
    }

    pub fn render(&self, db: &Db) -> String {
        let mut out = String::new();
        out.push_str("# HELP radiology_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE radiology_http_requests_total counter\n");
        for ((method, route, status), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "radiology_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(method),
                escape(route)
            );
        }
        out.push_str("# HELP radiology_http_request_duration_seconds HTTP request latency by method and route.\n");
        out.push_str("# TYPE radiology_http_request_duration_seconds histogram\n");
        for ((method, route), h) in self.latency.lock().unwrap().iter() {
            let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
            for (bound, n) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(out, "radiology_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "radiology_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "radiology_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "radiology_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        out.push_str("# HELP radiology_sync_runs_total QIDO-RS sync runs by result.\n");
        out.push_str("# TYPE radiology_sync_runs_total counter\n");
        for (result, n) in self.sync_runs.lock().unwrap().iter() {
            let _ = writeln!(out, "radiology_sync_runs_total{{result=\"{result}\"}} {n}");
        }
        out.push_str("# HELP radiology_sync_studies_total Studies handled by QIDO-RS sync runs, by outcome.\n");
        out.push_str("# TYPE radiology_sync_studies_total counter\n");
        for (outcome, n) in self.sync_studies.lock().unwrap().iter() {
            let _ = writeln!(out, "radiology_sync_studies_total{{outcome=\"{outcome}\"}} {n}");
        }
        out.push_str("# HELP radiology_import_jobs_total Bulk import jobs ended, by result.\n");
        out.push_str("# TYPE radiology_import_jobs_total counter\n");
        for (result, n) in self.import_jobs.lock().unwrap().iter() {
            let _ = writeln!(out, "radiology_import_jobs_total{{result=\"{result}\"}} {n}");
        }
        out.push_str("# HELP radiology_import_resources_total Bulk-imported lines by resource type and outcome.\n");
        out.push_str("# TYPE radiology_import_resources_total counter\n");
        for ((kind, outcome), n) in self.import_resources.lock().unwrap().iter() {
            let _ = writeln!(out, "radiology_import_resources_total{{type=\"{}\",outcome=\"{outcome}\"}} {n}", escape(kind));
        }
        out.push_str("# HELP radiology_hl7_messages_total Inbound HL7 v2 messages by type and outcome.\n");
        out.push_str("# TYPE radiology_hl7_messages_total counter\n");
        for ((kind, status), n) in self.hl7_messages.lock().unwrap().iter() {
            let _ = writeln!(out, "radiology_hl7_messages_total{{type=\"{}\",status=\"{}\"}} {n}", escape(kind), escape(status));
        }
        out.push_str("# HELP radiology_hl7_outbound_attempts_total Outbound HL7 deliveries by outcome.\n");
        out.push_str("# TYPE radiology_hl7_outbound_attempts_total counter\n");
        for (outcome, n) in self.hl7_outbound.lock().unwrap().iter() {
            let _ = writeln!(out, "radiology_hl7_outbound_attempts_total{{outcome=\"{}\"}} {n}", escape(outcome));
        }
        let (size, idle, max) = db.pool_stats();
        let backend = db.backend();
        out.push_str("# HELP radiology_db_pool_connections Database pool connections by state.\n");
        out.push_str("# TYPE radiology_db_pool_connections gauge\n");
        let _ = writeln!(out, "radiology_db_pool_connections{{backend=\"{backend}\",state=\"idle\"}} {idle}");
        let _ = writeln!(out, "radiology_db_pool_connections{{backend=\"{backend}\",state=\"in_use\"}} {}", size as usize - idle.min(size as usize));
        out.push_str("# HELP radiology_db_pool_max_connections Configured maximum pool size.\n");
        out.push_str("# TYPE radiology_db_pool_max_connections gauge\n");
        let _ = writeln!(out, "radiology_db_pool_max_connections{{backend=\"{backend}\"}} {max}");
        out
    }
}
