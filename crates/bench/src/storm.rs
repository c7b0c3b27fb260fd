//! Scenario `connection-storm`: N clean MQTT 3.1.1 connections opened at a fixed rate,
//! one subscription each (SUBACK awaited), then held idle; against FleetMQ, Mosquitto
//! and rumqttd in turn (crate::peers), runs alternating. Reports, per broker: the
//! connect rate it kept up with, handshake latency (TCP connect to SUBACK), failures,
//! the broker's CPU-seconds for the storm, and its resident memory per idle
//! connection (RSS after the idle period less RSS before the storm, over N).
//!
//! The clients are minimal (crate::raw): the bench's own memory must not limit N.
//! Connections come from several 127.0.0.x source addresses so that N can pass the
//! ~28,000 ephemeral ports of one address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args as ClapArgs;
use fleetmq_codec::QoS;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::peers::{
    close_summary, same_round_pairs, Lineup, PeerBinaries, PeerBroker, PeerKind, RoundRun,
};
use crate::raw;
use crate::stats::{self, Latency};
use crate::sysinfo::{self, note};
use crate::{Common, Outcome};

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub lineup: Lineup,
    /// Connections per run.
    #[arg(long, default_value_t = 50_000)]
    connections: usize,
    /// New connections a second the clients open.
    #[arg(long, default_value_t = 5_000)]
    rate: u32,
    /// How long the connections stay idle before memory is read.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    idle: Duration,
    /// Handshakes in flight at once, at most.
    #[arg(long, default_value_t = 2_000)]
    in_flight: usize,
}

impl RoundRun for Run {
    fn broker(&self) -> &str {
        self.broker
    }
    fn round(&self) -> usize {
        self.round
    }
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    broker: &'static str,
    round: usize,
    /// The machine's 1-minute load average when the run started.
    load1_at_start: f64,
    /// TCP sockets in TIME_WAIT when the run started (see [`TIME_WAIT_LIMIT`]).
    time_wait_at_start: Option<u64>,
    connections: usize,
    connected: usize,
    failed: usize,
    /// Connections a second, first attempt to last SUBACK.
    achieved_rate: f64,
    storm_s: f64,
    handshake: Latency,
    /// The handshake's two halves: TCP connect to CONNACK, then SUBSCRIBE to SUBACK.
    connack: Latency,
    suback: Latency,
    cpu_s: f64,
    rss_before: u64,
    rss_idle: u64,
    rss_per_connection: f64,
    first_error: Option<String>,
}

/// A run starts once at most this many TCP sockets are in TIME_WAIT (the previous
/// runs' connections; see [`sysinfo::wait_for_time_wait`]), waiting up to
/// [`TIME_WAIT_WAIT`]: a little over Linux's 60 s TIME_WAIT.
const TIME_WAIT_LIMIT: u64 = 2_000;
const TIME_WAIT_WAIT: Duration = Duration::from_secs(75);

pub async fn run(args: &Args, common: &Common) -> anyhow::Result<Outcome> {
    let kinds = args.lineup.kinds()?;
    // The bench holds one socket per connection, and so does the broker, which
    // inherits this process's limit.
    let needed = args.connections as u64 + 500;
    let limit = open_files_limit().unwrap_or(0);
    if limit < needed {
        bail!(
            "{} connections need about {needed} open files in the bench and in the broker; \
             the limit is {limit}: raise it (`ulimit -n`; past the hard limit only with \
             CAP_SYS_RESOURCE)",
            args.connections
        );
    }
    let bins = PeerBinaries::standard(common.fleetmq_bin.clone());
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    for round in 1..=args.lineup.runs {
        for kind in &kinds {
            let time_wait = sysinfo::wait_for_time_wait(TIME_WAIT_LIMIT, TIME_WAIT_WAIT).await;
            let gate = sysinfo::wait_for_load(common.max_load, common.load_wait).await;
            note(&format!(
                "round {round}: {} with {} connections at {}/s (load {:.2}, {} sockets in \
                 TIME_WAIT)",
                kind.name(),
                args.connections,
                args.rate,
                gate.load1_at_start,
                time_wait.map_or("?".to_string(), |n| n.to_string())
            ));
            match one_run(*kind, round, args, &bins, common).await {
                Ok(mut r) => {
                    r.load1_at_start = gate.load1_at_start;
                    r.time_wait_at_start = time_wait;
                    note(&format!(
                        "  {:.0} conn/s, {:.0} B RSS per connection, {:.2} CPU-s, {} failed; \
                         p99 to CONNACK {:.1} ms, SUBSCRIBE to SUBACK {:.1} ms",
                        r.achieved_rate,
                        r.rss_per_connection,
                        r.cpu_s,
                        r.failed,
                        r.connack.p99_ms,
                        r.suback.p99_ms
                    ));
                    if r.failed > 0 {
                        problems.push(format!(
                            "{} round {round}: {} of {} connections failed (first: {})",
                            r.broker,
                            r.failed,
                            r.connections,
                            r.first_error.clone().unwrap_or_default()
                        ));
                    }
                    runs.push(r);
                }
                Err(e) => problems.push(format!("{} round {round}: {e:#}", kind.name())),
            }
        }
    }
    let (summary, text) = summarize(args, &kinds, &runs);
    Ok(Outcome {
        scenario: "connection-storm",
        params: json!({
            "connections": args.connections,
            "rate": args.rate,
            "idle_s": args.idle.as_secs_f64(),
            "lineup": args.lineup.params(&kinds, &bins),
        }),
        runs: runs.iter().map(|r| json!(r)).collect(),
        summary,
        aims: Vec::new(),
        problems,
        text,
    })
}

/// Medians over the rounds per broker, FleetMQ's ratios against each peer (each taken
/// within one round, then their median), and a markdown row per broker: what
/// `scripts/bench-side-by-side.sh` copies into its rows file.
fn summarize(args: &Args, kinds: &[PeerKind], runs: &[Run]) -> (serde_json::Value, String) {
    let mut text = format!(
        "connection-storm: {} connections at {}/s, idle {:?}, {} rounds\n",
        args.connections, args.rate, args.idle, args.lineup.runs
    );
    let mut summary = serde_json::Map::new();
    let mut rows = String::new();
    for kind in kinds {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.broker == kind.name()).collect();
        let median = |f: fn(&Run) -> f64| {
            let values: Vec<f64> = mine.iter().map(|r| f(r)).collect();
            stats::Spread::of(&values)
        };
        let rate = median(|r| r.achieved_rate);
        let per_conn = median(|r| r.rss_per_connection);
        let cpu = median(|r| r.cpu_s);
        let p99 = median(|r| r.handshake.p99_ms);
        let failed = median(|r| r.failed as f64);
        text.push_str(&format!(
            "  {:<10} rate {}  RSS/conn {}  CPU {}  handshake p99 {}\n",
            kind.name(),
            rate.as_ref().map_or("-".into(), |s| s.line(0, "/s")),
            per_conn.as_ref().map_or("-".into(), |s| s.line(0, " B")),
            cpu.as_ref().map_or("-".into(), |s| s.line(2, " s")),
            p99.as_ref().map_or("-".into(), |s| s.line(1, " ms")),
        ));
        let cell = |s: &Option<stats::Spread>, d: usize| {
            s.as_ref().map_or("-".to_string(), |s| {
                format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = d)
            })
        };
        rows.push_str(&format!(
            "| {} at {}/s | {} | {} | {} | {} | {} | {} |\n",
            args.connections,
            args.rate,
            kind.name(),
            cell(&rate, 0),
            cell(&per_conn, 0),
            cell(&cpu, 2),
            cell(&p99, 1),
            failed
                .as_ref()
                .map_or("-".into(), |s| format!("{:.0}", s.median)),
        ));
        summary.insert(
            kind.name().to_string(),
            json!({
                "achieved_rate": rate,
                "rss_per_connection": per_conn,
                "cpu_s": cpu,
                "handshake_p99_ms": p99,
                "failed": failed,
            }),
        );
    }
    let mut ratios = serde_json::Map::new();
    for peer in kinds.iter().filter(|k| **k != PeerKind::Fleetmq) {
        let pairs = same_round_pairs(runs, *peer);
        let ratio = |f: fn(&Run) -> f64| {
            stats::Spread::of(
                &pairs
                    .iter()
                    .map(|(mine, theirs)| f(mine) / f(theirs))
                    .collect::<Vec<_>>(),
            )
        };
        let rate = ratio(|r| r.achieved_rate);
        let per_conn = ratio(|r| r.rss_per_connection);
        let cpu = ratio(|r| r.cpu_s);
        let p99 = ratio(|r| r.handshake.p99_ms);
        let line = |s: &Option<stats::Spread>| s.as_ref().map_or("-".into(), |s| s.line(2, "×"));
        text.push_str(&format!(
            "  fleetmq/{}: connect rate {}, RSS per idle connection {}, storm CPU {}, \
             handshake p99 {}\n",
            peer.name(),
            line(&rate),
            line(&per_conn),
            line(&cpu),
            line(&p99),
        ));
        ratios.insert(
            peer.name().to_string(),
            json!({
                "achieved_rate": rate,
                "rss_per_connection": per_conn,
                "cpu_s": cpu,
                "handshake_p99_ms": p99,
            }),
        );
    }
    let columns = [
        "storm",
        "broker",
        "connections/s",
        "RSS B per idle connection",
        "CPU-s",
        "handshake p99 ms",
        "failed",
    ];
    let summary = close_summary(summary, ratios, &columns, &rows, &mut text);
    (summary, text)
}

async fn one_run(
    kind: PeerKind,
    round: usize,
    args: &Args,
    bins: &PeerBinaries,
    common: &Common,
) -> anyhow::Result<Run> {
    let mut broker = PeerBroker::start(kind, bins, &common.work_dir)?;
    let pid = broker.pid();
    // Settle after start-up before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = sysinfo::rss_bytes(pid).map_or(0, |r| r.0);
    let ticks0 = sysinfo::cpu_ticks(pid).unwrap_or(0);
    let started = Instant::now();
    let (held, failures, latencies, first_error) = storm(broker.addr, args, kind, round).await;
    let storm_s = started.elapsed().as_secs_f64();
    let ticks1 = sysinfo::cpu_ticks(pid).unwrap_or(ticks0);
    tokio::time::sleep(args.idle).await;
    if !broker.running() {
        bail!("{} exited during the run", kind.name());
    }
    let rss_idle = sysinfo::rss_bytes(pid).map_or(0, |r| r.0);
    let connected = held.len();
    drop(held);
    Ok(Run {
        broker: kind.name(),
        round,
        load1_at_start: f64::NAN,
        time_wait_at_start: None,
        connections: args.connections,
        connected,
        failed: failures,
        achieved_rate: connected as f64 / storm_s,
        storm_s,
        handshake: Latency::of(&latencies.handshake),
        connack: Latency::of(&latencies.connack),
        suback: Latency::of(&latencies.suback),
        cpu_s: (ticks1 - ticks0) as f64 / sysinfo::clock_ticks(),
        rss_before,
        rss_idle,
        rss_per_connection: rss_idle.saturating_sub(rss_before) as f64 / connected.max(1) as f64,
        first_error,
    })
}

/// Handshake latencies (µs): the whole, and its halves.
struct Latencies {
    handshake: hdrhistogram::Histogram<u64>,
    connack: hdrhistogram::Histogram<u64>,
    suback: hdrhistogram::Histogram<u64>,
}

/// Opens the connections at the configured rate; returns the open sockets, the
/// number that failed, the handshake latencies and the first error.
async fn storm(
    addr: SocketAddr,
    args: &Args,
    kind: PeerKind,
    round: usize,
) -> (Vec<TcpStream>, usize, Latencies, Option<String>) {
    let slots = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let start = tokio::time::Instant::now();
    let launcher = {
        let (n, ips) = (args.connections, args.lineup.source_ips.max(1));
        let prefix = format!("storm-{}-{round}", kind.name());
        tokio::spawn(async move {
            for i in 0..n {
                tokio::time::sleep_until(start + interval * i as u32).await;
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let source = raw::source_ip(i, ips);
                let client_id = format!("{prefix}-{i}");
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = tokio::time::timeout(
                        Duration::from_secs(30),
                        handshake(source, addr, &client_id),
                    )
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no SUBACK within 30 s")));
                    drop(permit);
                    let _ = tx.send(result);
                });
            }
        })
    };
    let mut held = Vec::with_capacity(args.connections);
    let mut failures = 0;
    let mut first_error = None;
    let mut latencies = Latencies {
        handshake: stats::histogram(),
        connack: stats::histogram(),
        suback: stats::histogram(),
    };
    for _ in 0..args.connections {
        match rx.recv().await {
            Some(Ok((stream, connack, took))) => {
                stats::record(&mut latencies.handshake, took.as_micros() as u64);
                stats::record(&mut latencies.connack, connack.as_micros() as u64);
                stats::record(
                    &mut latencies.suback,
                    took.saturating_sub(connack).as_micros() as u64,
                );
                held.push(stream);
            }
            Some(Err(e)) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            None => break,
        }
    }
    let _ = launcher.await;
    (held, failures, latencies, first_error)
}

/// TCP connect from `source`, CONNECT, CONNACK, SUBSCRIBE (QoS 0), SUBACK; with the
/// times from the start to the CONNACK and to the SUBACK.
async fn handshake(
    source: IpAddr,
    addr: SocketAddr,
    client_id: &str,
) -> anyhow::Result<(TcpStream, Duration, Duration)> {
    let began = Instant::now();
    let mut stream = raw::connect(source, addr, client_id).await?;
    let connack = began.elapsed();
    raw::subscribe(&mut stream, &format!("storm/{client_id}"), QoS::AtMostOnce).await?;
    Ok((stream, connack, began.elapsed()))
}

/// This process's soft limit of open files.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(broker: &'static str, round: usize, rate: f64, per_conn: f64, cpu: f64) -> Run {
        let mut handshake = Latency::of(&hdrhistogram::Histogram::<u64>::new(3).unwrap());
        handshake.p99_ms = cpu * 10.0;
        Run {
            broker,
            round,
            load1_at_start: 0.0,
            time_wait_at_start: None,
            connections: 100,
            connected: 100,
            failed: 0,
            achieved_rate: rate,
            storm_s: 1.0,
            connack: handshake.clone(),
            suback: handshake.clone(),
            handshake,
            cpu_s: cpu,
            rss_before: 0,
            rss_idle: 0,
            rss_per_connection: per_conn,
            first_error: None,
        }
    }

    #[test]
    fn the_summary_pairs_rounds_and_writes_a_markdown_row_per_broker() {
        let args = Args {
            connections: 100,
            rate: 50,
            idle: Duration::from_secs(1),
            lineup: Lineup::fleetmq_once(2),
            in_flight: 100,
        };
        // Ratios within each round: 2.0 and 4.0 for RSS, 0.5 and 1.0 for CPU; medians
        // across rounds would give other figures (3000/1000 and 1.5/2.0).
        let runs = vec![
            run_of("fleetmq", 1, 50.0, 2000.0, 1.0),
            run_of("mosquitto", 1, 50.0, 1000.0, 2.0),
            run_of("fleetmq", 2, 40.0, 4000.0, 2.0),
            run_of("mosquitto", 2, 50.0, 1000.0, 2.0),
        ];
        let kinds = [PeerKind::Fleetmq, PeerKind::Mosquitto];
        let (summary, text) = summarize(&args, &kinds, &runs);
        let over = &summary["fleetmq_over"]["mosquitto"];
        assert_eq!(over["rss_per_connection"]["runs"], json!([2.0, 4.0]));
        assert_eq!(over["cpu_s"]["runs"], json!([0.5, 1.0]));
        assert_eq!(over["achieved_rate"]["runs"], json!([1.0, 0.8]));
        // run_of gives each run a handshake p99 of ten times its CPU-seconds.
        assert_eq!(over["handshake_p99_ms"]["runs"], json!([0.5, 1.0]));
        let rows = summary["markdown_rows"].as_str().unwrap();
        assert_eq!(rows.lines().count(), 2, "{rows}");
        assert!(
            rows.starts_with("| 100 at 50/s | fleetmq | 45 (40–50) | 3000 (2000–4000) |"),
            "{rows}"
        );
        assert!(
            text.contains(
                "  | storm | broker | connections/s | RSS B per idle connection | CPU-s | \
                 handshake p99 ms | failed |\n  |---|---|---|---|---|---|---|\n  | 100 at"
            ),
            "{text}"
        );
        assert!(
            text.contains("  fleetmq/mosquitto: connect rate 0.90 ×"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_small_storm_against_fleetmq_holds_every_connection() {
        let Ok(bin) = crate::fleetmq::find_binary(None) else {
            panic!("the fleetmq binary is needed: cargo build -p fleetmq");
        };
        let dir = tempfile::tempdir().unwrap();
        let bins = PeerBinaries::standard(bin);
        let args = Args {
            connections: 200,
            rate: 2_000,
            idle: Duration::from_millis(200),
            lineup: Lineup::fleetmq_once(2),
            in_flight: 100,
        };
        let common = Common {
            fleetmq_bin: bins.fleetmq.clone(),
            work_dir: dir.path().to_path_buf(),
            keep_dirs: false,
            max_load: 100.0,
            load_wait: Duration::ZERO,
        };
        let r = one_run(PeerKind::Fleetmq, 1, &args, &bins, &common)
            .await
            .unwrap();
        assert_eq!((r.connected, r.failed), (200, 0), "{:?}", r.first_error);
        assert!(r.rss_idle > 0 && r.achieved_rate > 0.0);
        // Both halves are recorded for every connection, and neither exceeds the whole.
        assert_eq!((r.connack.count, r.suback.count), (200, 200));
        assert!(r.connack.max_ms <= r.handshake.max_ms && r.suback.max_ms <= r.handshake.max_ms);
    }
}
