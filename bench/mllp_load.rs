//! MLLP load generator for `bench/mllp.sh`: C concurrent connections, each sending HL7 v2.3.1
//! ORM^O01 new orders (ORC-1 NW) one at a time and waiting for each ACK before the next.
//!
//! Every ACK must be `MSA|AA|<the message's MSH-10>`; anything else (AE/AR, another control id,
//! a closed connection, a timeout) is a failure, printed to stderr. Warm-up messages go first
//! on every connection and are not timed; then all connections start the timed messages
//! together. The summary is one JSON line on stdout. With `--out FILE`, every acknowledged
//! control id (warm-up included) is written to FILE, one per line, so that the caller can
//! check that each one was stored.
//!
//! usage: cargo run --release --example mllp_load -- --addr 127.0.0.1:2575 --connections 8 \
//!            --messages 40000 [--warmup 2000] [--first 1] [--out acked.txt]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

const SB: u8 = 0x0B;
const EB: u8 = 0x1C;
const CR: u8 = 0x0D;

#[derive(Parser, Debug, Clone)]
#[command(about = "HL7 v2 ORM^O01 load over MLLP: one message in flight per connection")]
struct Args {
    /// The service's MLLP address.
    #[arg(long, default_value = "127.0.0.1:2575")]
    addr: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Timed messages, split evenly across the connections.
    #[arg(long, default_value_t = 40_000)]
    messages: u64,
    /// Untimed messages sent first, split evenly across the connections.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Number of the first message (control ids, order numbers and UIDs are built from it);
    /// raise it to run again against the same database without reusing identifiers.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Seconds to wait for one ACK before counting the message as failed.
    #[arg(long, default_value_t = 30)]
    ack_timeout: u64,
    /// Write every acknowledged control id to this file, one per line.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// One realistic radiology new order (v2.3.1 ORM^O01, CR chest 2 views), numbered `n`.
fn orm(n: u64, ts: &str) -> (String, Vec<u8>) {
    let control_id = format!("LOAD{n:010}");
    let mrn = 100_000 + n % 20_000; // a patient pool: several orders per patient
    let (family, given, sex, dob) = match n % 4 {
        0 => ("O'BRIEN", "MARY^K", "F", "19580314"),
        1 => ("NGUYEN", "THANH^V", "M", "19720921"),
        2 => ("KOWALSKI", "ANNA", "F", "19850107"),
        _ => ("GARCIA", "LUIS^M", "M", "19631130"),
    };
    let start = "20261205103000";
    let segments = [
        format!("MSH|^~\\&|RIS|GENERAL_HOSP|RADIOLOGY|PLATFORM|{ts}||ORM^O01|{control_id}|P|2.3.1"),
        format!(
            "PID|1||MRN{mrn}^^^HOSP^MR||{family}^{given}||{dob}|{sex}|||12 HARBOR RD^^SPRINGFIELD^IL^62701^USA||^PRN^PH^^1^217^5550142|||||ACCT{n}^^^HOSP^AN"
        ),
        format!("PV1|1|O|RADXR^^^GENERAL_HOSP|||||1234^WELBY^MARCUS^^^DR|||||||||||V{n}^^^HOSP^VN"),
        format!(
            "ORC|NW|PLC{n}^EMR|FIL{n}^RIS||SC||^^^{start}^^R||{ts}|RCLERK^CLERK^RITA||1234^WELBY^MARCUS^^^DR||^WPN^PH^^1^217^5550100"
        ),
        format!(
            "OBR|1|PLC{n}^EMR|FIL{n}^RIS|71020^CHEST 2 VIEWS^C4|||||||||Cough \\T\\ fever x3 days; r/o pneumonia|||1234^WELBY^MARCUS^^^DR||ACC{n}|RP{n}|||||CR|||^^^{start}^^R||||R05^Cough^I10"
        ),
        format!("ZDS|1.2.826.0.1.3680043.10.543.{n}^RIS^Application^DICOM"),
    ];
    let mut frame = Vec::with_capacity(1024);
    frame.push(SB);
    for s in &segments {
        frame.extend_from_slice(s.as_bytes());
        frame.push(CR);
    }
    frame.push(EB);
    frame.push(CR);
    (control_id, frame)
}

/// Field `i` (MSA-1 = 1) of the ACK's MSA segment.
fn msa_field(ack: &str, i: usize) -> Option<&str> {
    ack.split(['\r', '\n']).find(|s| s.starts_with("MSA|")).and_then(|s| s.split('|').nth(i))
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Sends one frame and reads the next frame back (its content, without the envelope).
    async fn round_trip(&mut self, frame: &[u8]) -> anyhow::Result<String> {
        self.stream.write_all(frame).await.context("sending")?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == [EB, CR]) {
                let start = self.buf.iter().position(|&b| b == SB).filter(|&s| s < end).map_or(0, |s| s + 1);
                let text = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(text);
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow::anyhow!("no ACK within {} s", self.timeout.as_secs()))?
                .context("reading")?;
            if n == 0 {
                bail!("connection closed by the service");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    acked: u64,
    failed: u64,
    latencies_us: Vec<u64>,
    acked_ids: Vec<String>,
}

/// Sends messages `range` on `conn`, one at a time.
async fn send_range(conn: &mut Option<Conn>, k: usize, range: std::ops::Range<u64>, tally: &mut Tally, timed: bool) {
    for n in range {
        let ts = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
        let (control_id, frame) = orm(n, &ts);
        let Some(c) = conn.as_mut() else {
            tally.failed += 1;
            continue;
        };
        tally.sent += 1;
        let t0 = Instant::now();
        match c.round_trip(&frame).await {
            Ok(ack) => {
                let elapsed = t0.elapsed();
                let code = msa_field(&ack, 1);
                let echoed = msa_field(&ack, 2);
                if code == Some("AA") && echoed == Some(control_id.as_str()) {
                    tally.acked += 1;
                    if timed {
                        tally.latencies_us.push(elapsed.as_micros() as u64);
                    }
                    tally.acked_ids.push(control_id);
                } else {
                    tally.failed += 1;
                    eprintln!("connection {k}: {control_id} answered {:?}", ack.replace('\r', "\\r"));
                }
            }
            Err(e) => {
                tally.failed += 1;
                eprintln!("connection {k}: {control_id}: {e:#}; giving up on this connection");
                *conn = None; // the stream's state is unknown: the rest of its messages fail
            }
        }
    }
}

/// Message numbers [first, first + total) split into `parts` contiguous ranges, sizes differing by ≤ 1.
fn split(first: u64, total: u64, parts: usize, k: usize) -> std::ops::Range<u64> {
    let parts = parts as u64;
    let k = k as u64;
    let (q, r) = (total / parts, total % parts);
    let start = first + k * q + k.min(r);
    start..start + q + u64::from(k < r)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let c = args.connections;
    // Everything is timed from one barrier: all connections open and warmed up.
    let ready = Arc::new(Barrier::new(c + 1));
    let done = Arc::new(Barrier::new(c + 1));
    let mut tasks = Vec::new();
    for k in 0..c {
        let args = args.clone();
        let (ready, done) = (ready.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut warm = Tally::default();
            let mut timed = Tally::default();
            let mut conn = match TcpStream::connect(&args.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    Some(Conn { stream: s, buf: Vec::with_capacity(8192), timeout: Duration::from_secs(args.ack_timeout) })
                }
                Err(e) => {
                    eprintln!("connection {k}: cannot connect to {}: {e}", args.addr);
                    None
                }
            };
            let warm_range = split(args.first, args.warmup, args.connections, k);
            send_range(&mut conn, k, warm_range, &mut warm, false).await;
            ready.wait().await;
            let timed_range = split(args.first + args.warmup, args.messages, args.connections, k);
            send_range(&mut conn, k, timed_range, &mut timed, true).await;
            done.wait().await;
            if let Some(mut c) = conn {
                let _ = c.stream.shutdown().await;
            }
            (warm, timed)
        }));
    }
    ready.wait().await;
    let t0 = Instant::now();
    done.wait().await;
    let seconds = t0.elapsed().as_secs_f64();

    let mut warm = Tally::default();
    let mut timed = Tally::default();
    for t in tasks {
        let (w, m) = t.await.context("a connection task panicked")?;
        for (into, from) in [(&mut warm, w), (&mut timed, m)] {
            into.sent += from.sent;
            into.acked += from.acked;
            into.failed += from.failed;
            into.latencies_us.extend(from.latencies_us);
            into.acked_ids.extend(from.acked_ids);
        }
    }
    if let Some(path) = &args.out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
        for id in warm.acked_ids.iter().chain(&timed.acked_ids) {
            writeln!(f, "{id}")?;
        }
        f.flush()?;
    }
    timed.latencies_us.sort_unstable();
    let summary = serde_json::json!({
        "connections": c,
        "warmup_sent": warm.sent,
        "warmup_acked": warm.acked,
        "warmup_failed": warm.failed,
        "sent": timed.sent,
        "acked": timed.acked,
        "failed": timed.failed,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "messages_per_second": (timed.acked as f64 / seconds).round(),
        "latency_ms_p50": percentile(&timed.latencies_us, 50.0),
        "latency_ms_p99": percentile(&timed.latencies_us, 99.0),
        "latency_ms_max": percentile(&timed.latencies_us, 100.0),
    });
    println!("{summary}");
    if warm.failed + timed.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
