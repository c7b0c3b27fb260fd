//! Scenarios `point-to-point`, `fan-out` and `fan-in`: message traffic through one
//! broker, side by side with Mosquitto and rumqttd (crate::peers), rounds alternating
//! between the brokers, each run on a freshly started broker.
//!
//! Each run is a sweep: the publishers send at a rate, raised step by step (by
//! `--step-factor`) until a step fails: its p99 delivery latency passes `--p99-limit`,
//! fewer than 99.9% of the messages it should deliver arrive within the drain time, or
//! the publishers cannot send at the rate (the broker stops reading them, or the bench
//! itself runs out of CPU: `bench_cpu_s` tells). The run's figure is its best step,
//! the fastest that passed. Every step records delivered msg/s, latency percentiles
//! (publish written → PUBLISH read by the subscriber, HDR histograms), broker
//! CPU-seconds per million delivered messages, and broker RSS.
//!
//! Shapes, as the field names them:
//! - point-to-point: publisher i → topic `bench/p2p/i` → subscriber i;
//! - fan-out: every publisher → `bench/fanout` → every subscriber;
//! - fan-in: publisher i → `bench/fanin/i` → a `$share/bench/bench/fanin/+` group.
//!
//! The clients are crate::raw connections: publishers are driven by a few pacer tasks
//! writing pre-encoded PUBLISH packets (the codec's bytes, with the send time, step
//! and sequence patched into the payload), subscribers by one task each that decodes
//! with the codec and acknowledges QoS 1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Args as ClapArgs;
use fleetmq_codec::{
    decode, encode, Packet, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::peers::{
    close_summary, same_round_pairs, Lineup, PeerBinaries, PeerBroker, PeerKind, RoundRun,
};
use crate::stats::{self, Latency, Spread};
use crate::sysinfo::{self, note};
use crate::{plot, raw, Common, Outcome};

/// The message shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    PointToPoint,
    FanOut,
    FanIn,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::PointToPoint => "point-to-point",
            Shape::FanOut => "fan-out",
            Shape::FanIn => "fan-in",
        }
    }

    fn topic(self, publisher: usize) -> String {
        match self {
            Shape::PointToPoint => format!("bench/p2p/{publisher}"),
            Shape::FanOut => "bench/fanout".to_string(),
            Shape::FanIn => format!("bench/fanin/{publisher}"),
        }
    }

    fn filter(self, subscriber: usize) -> String {
        match self {
            Shape::PointToPoint => format!("bench/p2p/{subscriber}"),
            Shape::FanOut => "bench/fanout".to_string(),
            Shape::FanIn => "$share/bench/bench/fanin/+".to_string(),
        }
    }

    /// Deliveries one PUBLISH makes.
    fn fan(self, subscribers: usize) -> u64 {
        match self {
            Shape::FanOut => subscribers as u64,
            Shape::PointToPoint | Shape::FanIn => 1,
        }
    }
}

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub lineup: Lineup,
    /// Publishing clients. Default: the shape's (point-to-point 1,000, fan-out 1,
    /// fan-in 1,000).
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscribing clients. Default: the shape's (point-to-point 1,000, fan-out 1,000,
    /// fan-in 5).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// QoS of the PUBLISHes and of the subscriptions: 0 or 1.
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Payload bytes (at least 16: send time, step and sequence).
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
    /// PUBLISHes a second, all publishers together, at the first step. Default: the
    /// shape's (2,000; fan-out 20, which makes 20,000 deliveries a second).
    #[arg(long)]
    pub start_rate: Option<f64>,
    /// Each step's rate over the one before.
    #[arg(long, default_value_t = 1.25)]
    pub step_factor: f64,
    /// Steps at most per run.
    #[arg(long, default_value_t = 24)]
    pub max_steps: usize,
    /// Sending before each step's measurement starts.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Each step's measured sending time.
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    pub step: Duration,
    /// After each step, how long late messages may still arrive.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub drain: Duration,
    /// A step passes while its p99 delivery latency is at most this. Default: 10 ms;
    /// fan-out 100 ms (one PUBLISH is a burst of a thousand deliveries, and its p99 is
    /// the time to write nearly all of them).
    #[arg(long, value_parser = crate::parse_duration)]
    pub p99_limit: Option<Duration>,
    /// QoS 1 PUBLISHes a publisher keeps unacknowledged at most (rumqttd refuses more
    /// than its `max_inflight_count`, 100 here).
    #[arg(long, default_value_t = 64)]
    pub inflight: u64,
    /// Write a plot of p99 latency against delivered rate (SVG) here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

/// What the runs of one shape use, defaults resolved.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    shape: Shape,
    publishers: usize,
    subscribers: usize,
    qos: u8,
    payload: usize,
    start_rate: f64,
    step_factor: f64,
    max_steps: usize,
    warmup_s: f64,
    step_s: f64,
    drain_s: f64,
    p99_limit_ms: f64,
    inflight: u64,
}

impl Plan {
    fn new(shape: Shape, args: &Args) -> anyhow::Result<Plan> {
        let (publishers, subscribers, start_rate, p99_limit_ms) = match shape {
            Shape::PointToPoint => (1_000, 1_000, 2_000.0, 10.0),
            Shape::FanOut => (1, 1_000, 20.0, 100.0),
            Shape::FanIn => (1_000, 5, 2_000.0, 10.0),
        };
        let plan = Plan {
            shape,
            publishers: args.publishers.unwrap_or(publishers),
            subscribers: args.subscribers.unwrap_or(subscribers),
            qos: args.qos,
            payload: args.payload,
            start_rate: args.start_rate.unwrap_or(start_rate),
            step_factor: args.step_factor,
            max_steps: args.max_steps,
            warmup_s: args.warmup.as_secs_f64(),
            step_s: args.step.as_secs_f64(),
            drain_s: args.drain.as_secs_f64(),
            p99_limit_ms: args
                .p99_limit
                .map_or(p99_limit_ms, |l| l.as_secs_f64() * 1000.0),
            inflight: args.inflight.max(1),
        };
        if plan.qos > 1 {
            bail!("--qos {}: 0 or 1", plan.qos);
        }
        if plan.payload < PAYLOAD_HEADER {
            bail!(
                "--payload {}: at least {PAYLOAD_HEADER} bytes",
                plan.payload
            );
        }
        if plan.publishers == 0 || plan.subscribers == 0 {
            bail!("at least one publisher and one subscriber");
        }
        if shape == Shape::PointToPoint && plan.publishers != plan.subscribers {
            bail!("point-to-point pairs publishers with subscribers: give as many of each");
        }
        let positive = plan.step_factor.partial_cmp(&1.0) == Some(std::cmp::Ordering::Greater)
            && plan.start_rate.partial_cmp(&0.0) == Some(std::cmp::Ordering::Greater)
            && plan.step_s > 0.0;
        if !positive {
            bail!("--start-rate, --step and --step-factor - 1 must be positive");
        }
        Ok(plan)
    }

    fn qos(&self) -> QoS {
        if self.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }
    }

    fn rate(&self, step: usize) -> f64 {
        self.start_rate * self.step_factor.powi(step as i32)
    }

    fn label(&self) -> String {
        format!(
            "{} {}→{} QoS {} {} B",
            self.shape.name(),
            self.publishers,
            self.subscribers,
            self.qos,
            self.payload
        )
    }
}

/// Send time (ns since the bench's epoch), step tag and sequence open every payload.
const PAYLOAD_HEADER: usize = 16;
/// The step tag of messages sent while warming up: not measured.
const WARMUP: u32 = u32::MAX;
/// The histograms of the traffic scenarios: 1 µs to 60 s, two significant digits (1%):
/// a thousand subscribers each hold one per step in flight.
fn small_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000, 2) {
        Ok(h) => h,
        Err(e) => unreachable!("histogram bounds: {e}"),
    }
}

/// One step of one run.
#[derive(Debug, Clone, Serialize)]
struct Step {
    step: usize,
    /// PUBLISHes a second asked of the publishers.
    target_rate: f64,
    /// PUBLISHes a second they wrote in the measured time.
    sent_rate: f64,
    expected: u64,
    delivered: u64,
    delivered_rate: f64,
    latency: Latency,
    broker_cpu_s: f64,
    cpu_s_per_million: f64,
    bench_cpu_s: f64,
    rss_bytes: u64,
    passed: bool,
    /// Why it did not pass.
    failed: Option<String>,
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
    steps: Vec<Step>,
    /// The index in `steps` of the fastest that passed.
    best: Option<usize>,
}

impl Run {
    fn best(&self) -> Option<&Step> {
        self.best.map(|i| &self.steps[i])
    }

    /// The step at `target_rate`, if this run reached it.
    fn at_rate(&self, target_rate: f64) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| (s.target_rate - target_rate).abs() < 1e-6 * target_rate.max(1.0))
    }
}

pub async fn run(shape: Shape, args: &Args, common: &Common) -> anyhow::Result<Outcome> {
    let plan = Plan::new(shape, args)?;
    let kinds = args.lineup.kinds()?;
    let bins = PeerBinaries::standard(common.fleetmq_bin.clone());
    let mut runs: Vec<Run> = Vec::new();
    let mut problems = Vec::new();
    for round in 1..=args.lineup.runs {
        for kind in &kinds {
            let gate = sysinfo::wait_for_load(common.max_load, common.load_wait).await;
            note(&format!(
                "round {round}: {} {} (load {:.2})",
                kind.name(),
                plan.label(),
                gate.load1_at_start
            ));
            match one_run(*kind, round, &plan, args.lineup.source_ips, &bins, common).await {
                Ok((mut run, mut seen)) => {
                    run.load1_at_start = gate.load1_at_start;
                    if let Some(best) = run.best() {
                        note(&format!(
                            "  best: {:.0} msg/s delivered, p99 {:.2} ms, {:.2} CPU-s per million",
                            best.delivered_rate, best.latency.p99_ms, best.cpu_s_per_million
                        ));
                    } else {
                        note("  no step passed");
                    }
                    problems.extend(
                        seen.drain(..)
                            .map(|p| format!("{} round {round}: {p}", kind.name())),
                    );
                    runs.push(run);
                }
                Err(e) => problems.push(format!("{} round {round}: {e:#}", kind.name())),
            }
        }
    }
    let (summary, text) = summarize(&plan, &kinds, &runs);
    if let Some(path) = &args.plot {
        let svg = plot_runs(&plan, &kinds, &runs);
        std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(Outcome {
        scenario: shape.name(),
        params: json!({
            "plan": plan,
            "lineup": args.lineup.params(&kinds, &bins),
        }),
        runs: runs.iter().map(|r| json!(r)).collect(),
        summary,
        aims: Vec::new(),
        problems,
        text,
    })
}

/// Medians over the rounds per broker, the ratios against each peer, and a markdown
/// row per broker.
fn summarize(plan: &Plan, kinds: &[PeerKind], runs: &[Run]) -> (serde_json::Value, String) {
    let mut text = format!(
        "{}: steps ×{} from {} PUBLISH/s, {} s each, p99 limit {} ms\n",
        plan.label(),
        plan.step_factor,
        plan.start_rate,
        plan.step_s,
        plan.p99_limit_ms
    );
    let mut summary = serde_json::Map::new();
    let mut rows = String::new();
    for kind in kinds {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.broker == kind.name()).collect();
        let of = |f: fn(&Step) -> f64| {
            Spread::of(
                &mine
                    .iter()
                    .map(|r| r.best().map_or(f64::NAN, f))
                    .collect::<Vec<_>>(),
            )
        };
        let rate = of(|s| s.delivered_rate);
        let p50 = of(|s| s.latency.p50_ms);
        let p99 = of(|s| s.latency.p99_ms);
        let p999 = of(|s| s.latency.p999_ms);
        let cpu = of(|s| s.cpu_s_per_million);
        let rss = of(|s| s.rss_bytes as f64);
        // A run whose every step passed was stopped by --max-steps, not by the broker.
        let capped = mine
            .iter()
            .filter(|r| r.steps.len() == plan.max_steps && r.steps.iter().all(|s| s.passed))
            .count();
        text.push_str(&format!(
            "  {:<10} best {}  p99 {}  CPU/M {}{}\n",
            kind.name(),
            rate.as_ref().map_or("-".into(), |s| s.line(0, "msg/s")),
            p99.as_ref().map_or("-".into(), |s| s.line(2, "ms")),
            cpu.as_ref().map_or("-".into(), |s| s.line(2, "s")),
            if capped > 0 {
                format!("  ({capped} run(s) passed every step: a lower bound)")
            } else {
                String::new()
            },
        ));
        let med = |s: &Option<Spread>, d: usize| {
            s.as_ref()
                .map_or("-".to_string(), |s| format!("{:.d$}", s.median, d = d))
        };
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            plan.label(),
            kind.name(),
            med(&rate, 0),
            med(&p50, 2),
            med(&p99, 2),
            med(&p999, 2),
            med(&cpu, 2),
            rss.as_ref()
                .map_or("-".to_string(), |s| format!("{:.0}", s.median / 1e6)),
        ));
        summary.insert(
            kind.name().to_string(),
            json!({
                "best_delivered_rate": rate,
                "p50_ms": p50,
                "p99_ms": p99,
                "p999_ms": p999,
                "cpu_s_per_million": cpu,
                "rss_bytes": rss,
            }),
        );
    }
    // Ratios of FleetMQ against each peer, each figure compared within the same round.
    let mut ratios = serde_json::Map::new();
    for peer in kinds.iter().filter(|k| **k != PeerKind::Fleetmq) {
        let pairs = same_round_pairs(runs, *peer);
        let rate_ratio = Spread::of(
            &pairs
                .iter()
                .map(|(f, p)| match (f.best(), p.best()) {
                    (Some(f), Some(p)) => f.delivered_rate / p.delivered_rate,
                    _ => f64::NAN,
                })
                .collect::<Vec<_>>(),
        );
        // CPU per message depends on the rate: compared at the fastest step both passed.
        let cpu_ratio = Spread::of(
            &pairs
                .iter()
                .map(|(f, p)| {
                    let both = f.steps.iter().rev().filter(|s| s.passed).find_map(|s| {
                        p.at_rate(s.target_rate)
                            .filter(|q| q.passed)
                            .map(|q| (s, q))
                    });
                    both.map_or(f64::NAN, |(s, q)| s.cpu_s_per_million / q.cpu_s_per_million)
                })
                .collect::<Vec<_>>(),
        );
        // Latency at the peer's best rate, where FleetMQ ran that step.
        let p99_at_peer_best = Spread::of(
            &pairs
                .iter()
                .map(|(f, p)| {
                    p.best()
                        .and_then(|pb| f.at_rate(pb.target_rate).map(|fs| (fs, pb)))
                        .map_or(f64::NAN, |(fs, pb)| fs.latency.p99_ms / pb.latency.p99_ms)
                })
                .collect::<Vec<_>>(),
        );
        let line = |s: &Option<Spread>| s.as_ref().map_or("-".into(), |s| s.line(2, "×"));
        text.push_str(&format!(
            "  fleetmq/{}: best rate {}, CPU per million at the fastest step both passed {}, \
             p99 at {}'s best rate {}\n",
            peer.name(),
            line(&rate_ratio),
            line(&cpu_ratio),
            peer.name(),
            line(&p99_at_peer_best),
        ));
        ratios.insert(
            peer.name().to_string(),
            json!({
                "best_rate": rate_ratio,
                "cpu_per_million_at_common_step": cpu_ratio,
                "p99_at_peer_best_rate": p99_at_peer_best,
            }),
        );
    }
    let columns = [
        "scenario",
        "broker",
        "best msg/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU-s/M",
        "RSS MB",
    ];
    let summary = close_summary(summary, ratios, &columns, &rows, &mut text);
    (summary, text)
}

/// p99 against delivered rate, one line per broker: its run of median best rate.
fn plot_runs(plan: &Plan, kinds: &[PeerKind], runs: &[Run]) -> String {
    let mut series = Vec::new();
    for kind in kinds {
        let mut mine: Vec<&Run> = runs.iter().filter(|r| r.broker == kind.name()).collect();
        mine.sort_by(|a, b| {
            let rate = |r: &Run| r.best().map_or(0.0, |s| s.delivered_rate);
            rate(a).total_cmp(&rate(b))
        });
        let Some(median) = mine.get(mine.len() / 2) else {
            continue;
        };
        let points: Vec<(f64, f64)> = median
            .steps
            .iter()
            .filter(|s| s.latency.count > 0)
            .map(|s| (s.delivered_rate, s.latency.p99_ms))
            .collect();
        series.push(plot::Series {
            name: kind.name().to_string(),
            points,
        });
    }
    plot::latency_against_rate(
        &format!("{}: p99 latency against delivered rate", plan.label()),
        &series,
        plan.p99_limit_ms,
    )
}

/// What the subscriber tasks share with the run.
#[derive(Default)]
struct SubStats {
    /// Step tag → latencies (µs) of the messages of that step read so far.
    by_step: HashMap<u32, Histogram<u64>>,
    /// What ended the connection, if it ended.
    ended: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One publishing connection, as its pacer drives it.
struct PubConn {
    write: OwnedWriteHalf,
    /// The PUBLISH as the codec encodes it; each send patches the payload header (and
    /// the packet id at QoS 1).
    template: Vec<u8>,
    payload_at: usize,
    packet_id_at: Option<usize>,
    next_packet_id: u16,
    publisher: u32,
    sequence: u32,
    sent: u64,
    /// PUBACKs read, by its reader task.
    acked: Arc<AtomicU64>,
    pending: Vec<u8>,
}

/// What a pacer is asked to do for one step.
struct StepOrder {
    tag: u32,
    /// PUBLISHes a second for this pacer's publishers together.
    rate: f64,
    measure_from: Instant,
    until: Instant,
    done: oneshot::Sender<PacerReport>,
}

struct PacerReport {
    /// PUBLISHes written between `measure_from` and `until`.
    sent_measured: u64,
    /// The first write error, if any.
    error: Option<String>,
}

async fn one_run(
    kind: PeerKind,
    round: usize,
    plan: &Plan,
    source_ips: u8,
    bins: &PeerBinaries,
    common: &Common,
) -> anyhow::Result<(Run, Vec<String>)> {
    let mut broker = PeerBroker::start(kind, bins, &common.work_dir)?;
    let pid = broker.pid();
    let epoch = Instant::now();
    let prefix = format!("{}-{}-{round}", plan.shape.name(), kind.name());
    let connects = Arc::new(Semaphore::new(200));
    let qos = plan.qos();

    // Subscribers first, every SUBACK awaited.
    let mut sub_tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut sub_stats = Vec::new();
    let mut handshakes = Vec::new();
    for i in 0..plan.subscribers {
        let (addr, connects) = (broker.addr, connects.clone());
        let (id, filter) = (format!("{prefix}-sub-{i}"), plan.shape.filter(i));
        let source = raw::source_ip(i, source_ips);
        handshakes.push(tokio::spawn(async move {
            let _permit = connects.acquire().await;
            let mut stream = raw::connect(source, addr, &id).await?;
            raw::subscribe(&mut stream, &filter, qos).await?;
            anyhow::Ok(stream)
        }));
    }
    for (i, h) in handshakes.into_iter().enumerate() {
        let stream = h
            .await
            .context("subscriber task")?
            .with_context(|| format!("subscriber {i}"))?;
        let stats = Arc::new(Mutex::new(SubStats::default()));
        sub_stats.push(stats.clone());
        sub_tasks.push(tokio::spawn(subscriber(stream, stats, epoch)));
    }

    // Publishers, spread over the pacers.
    let pacers = plan.publishers.min(4);
    let mut groups: Vec<Vec<PubConn>> = (0..pacers).map(|_| Vec::new()).collect();
    let mut readers = Vec::new();
    let mut handshakes = Vec::new();
    for i in 0..plan.publishers {
        let (addr, connects) = (broker.addr, connects.clone());
        let id = format!("{prefix}-pub-{i}");
        let source = raw::source_ip(plan.subscribers + i, source_ips);
        handshakes.push(tokio::spawn(async move {
            let _permit = connects.acquire().await;
            raw::connect(source, addr, &id).await
        }));
    }
    let closed = Arc::new(AtomicBool::new(false));
    for (i, h) in handshakes.into_iter().enumerate() {
        let stream = h
            .await
            .context("publisher task")?
            .with_context(|| format!("publisher {i}"))?;
        let (read, write) = stream.into_split();
        let acked = Arc::new(AtomicU64::new(0));
        let (template, payload_at, packet_id_at) =
            publish_template(&plan.shape.topic(i), qos, plan.payload)?;
        readers.push(tokio::spawn(publisher_reader(
            read,
            acked.clone(),
            closed.clone(),
        )));
        groups[i % pacers].push(PubConn {
            write,
            template,
            payload_at,
            packet_id_at,
            next_packet_id: 1,
            publisher: i as u32,
            sequence: 0,
            sent: 0,
            acked,
            pending: Vec::new(),
        });
    }
    // Each pacer's orders carry the share of the rate its publishers make.
    let mut orders = Vec::new();
    let mut pacer_tasks = Vec::new();
    for group in groups {
        let (tx, rx) = mpsc::channel(1);
        orders.push((tx, group.len() as f64 / plan.publishers as f64));
        pacer_tasks.push(tokio::spawn(pacer(group, rx, epoch, plan.inflight)));
    }

    let fan = plan.shape.fan(plan.subscribers);
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    let me = std::process::id();
    for step in 0..plan.max_steps {
        let rate = plan.rate(step);
        let started = Instant::now();
        let measure_from = started + Duration::from_secs_f64(plan.warmup_s);
        let until = measure_from + Duration::from_secs_f64(plan.step_s);
        let mut replies = Vec::new();
        for (tx, share) in &orders {
            let (done, reply) = oneshot::channel();
            let order = StepOrder {
                tag: step as u32,
                rate: rate * share,
                measure_from,
                until,
                done,
            };
            if tx.send(order).await.is_err() {
                bail!("a pacer stopped");
            }
            replies.push(reply);
        }
        tokio::time::sleep_until(measure_from.into()).await;
        let (ticks0, bench0) = (
            sysinfo::cpu_ticks(pid).unwrap_or(0),
            sysinfo::cpu_ticks(me).unwrap_or(0),
        );
        tokio::time::sleep_until(until.into()).await;
        let (ticks1, bench1) = (
            sysinfo::cpu_ticks(pid).unwrap_or(ticks0),
            sysinfo::cpu_ticks(me).unwrap_or(bench0),
        );
        let mut sent = 0;
        for reply in replies {
            let report = reply.await.context("a pacer stopped")?;
            sent += report.sent_measured;
            if let Some(e) = report.error {
                problems.push(format!("step {step}: publisher write failed: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(plan.drain_s)).await;
        let mut latencies = small_histogram();
        for stats in &sub_stats {
            let mut s = lock(stats);
            if let Some(h) = s.by_step.remove(&(step as u32)) {
                stats::merge(&mut latencies, &h);
            }
            // What came later than its drain is not counted anywhere.
            s.by_step
                .retain(|tag, _| *tag > step as u32 && *tag != WARMUP);
        }
        let expected = sent * fan;
        let delivered = latencies.len();
        let broker_cpu_s = (ticks1 - ticks0) as f64 / sysinfo::clock_ticks();
        let latency = Latency::of(&latencies);
        let wanted = rate * plan.step_s;
        // Each pacer sends whole PUBLISHes: at a step's end it may owe less than one.
        let failed = if (sent as f64) < 0.99 * wanted - orders.len() as f64 {
            Some(format!(
                "the publishers wrote {sent} of {wanted:.0} PUBLISHes: the broker did not \
                 take them (or the bench ran out of CPU)"
            ))
        } else if (delivered as f64) < 0.999 * expected as f64 {
            Some(format!(
                "{delivered} of {expected} deliveries within {} s",
                plan.drain_s
            ))
        } else if latency.p99_ms > plan.p99_limit_ms {
            Some(format!("p99 {:.2} ms", latency.p99_ms))
        } else {
            None
        };
        let record = Step {
            step,
            target_rate: rate,
            sent_rate: sent as f64 / plan.step_s,
            expected,
            delivered,
            delivered_rate: delivered as f64 / plan.step_s,
            cpu_s_per_million: broker_cpu_s / (delivered.max(1) as f64) * 1e6,
            broker_cpu_s,
            bench_cpu_s: (bench1 - bench0) as f64 / sysinfo::clock_ticks(),
            rss_bytes: sysinfo::rss_bytes(pid).map_or(0, |r| r.0),
            passed: failed.is_none(),
            failed: failed.clone(),
            latency,
        };
        note(&format!(
            "  step {step}: {:.0}/s asked, {:.0} delivered/s, p99 {:.2} ms, broker {:.2} CPU-s, \
             bench {:.2} CPU-s{}",
            rate,
            record.delivered_rate,
            record.latency.p99_ms,
            record.broker_cpu_s,
            record.bench_cpu_s,
            failed.map_or(String::new(), |f| format!(": stop, {f}"))
        ));
        let passed = record.passed;
        steps.push(record);
        if !broker.running() {
            problems.push(format!("{} exited at step {step}", kind.name()));
            break;
        }
        if closed.load(Ordering::Relaxed) {
            problems.push("the broker closed a publisher's connection".into());
            break;
        }
        if !passed {
            break;
        }
    }
    for stats in &sub_stats {
        if let Some(ended) = &lock(stats).ended {
            problems.push(format!("a subscriber's connection ended: {ended}"));
            break;
        }
    }
    drop(orders);
    for t in pacer_tasks {
        let _ = t.await;
    }
    for t in sub_tasks.into_iter().chain(readers) {
        t.abort();
    }
    let best = steps.iter().rposition(|s| s.passed);
    Ok((
        Run {
            broker: kind.name(),
            round,
            load1_at_start: f64::NAN,
            steps,
            best,
        },
        problems,
    ))
}

/// The PUBLISH `topic` at `qos` with a `payload`-byte payload, as the codec writes it;
/// where its payload starts and, at QoS 1, where its packet id is.
fn publish_template(
    topic: &str,
    qos: QoS,
    payload: usize,
) -> anyhow::Result<(Vec<u8>, usize, Option<usize>)> {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0u8; payload]),
    });
    let bytes = raw::packet_bytes(&packet)?;
    let payload_at = bytes.len() - payload;
    // MQTT 3.1.1 (3.3.2): the packet id follows the topic and ends the variable header.
    let packet_id_at = (qos != QoS::AtMostOnce).then(|| payload_at - 2);
    Ok((bytes, payload_at, packet_id_at))
}

/// Writes its publishers' PUBLISHes at each order's rate, spread evenly over them,
/// from a 1 ms tick: every tick sends what the rate owes since the step began.
async fn pacer(
    mut conns: Vec<PubConn>,
    mut orders: mpsc::Receiver<StepOrder>,
    epoch: Instant,
    inflight: u64,
) {
    let mut next = 0usize;
    let mut broken: Option<String> = None;
    while let Some(order) = orders.recv().await {
        let started = Instant::now();
        let mut owed_sent = 0u64;
        let mut sent_measured = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= order.until {
                break;
            }
            let owed = (order.rate * now.duration_since(started).as_secs_f64()) as u64;
            let tag = if now < order.measure_from {
                WARMUP
            } else {
                order.tag
            };
            let stamp = now.duration_since(epoch).as_nanos() as u64;
            // One pass over the publishers at most per tick: one whose window is full
            // waits for its PUBACKs.
            let (mut skipped, n) = (0, conns.len());
            while owed_sent < owed && skipped < n {
                let c = &mut conns[next];
                next = (next + 1) % n;
                if c.packet_id_at.is_some() && c.sent - c.acked.load(Ordering::Relaxed) >= inflight
                {
                    skipped += 1;
                    continue;
                }
                c.queue(stamp, tag);
                owed_sent += 1;
                if tag != WARMUP {
                    sent_measured += 1;
                }
            }
            for c in conns.iter_mut().filter(|c| !c.pending.is_empty()) {
                if let Err(e) = c.write.write_all(&c.pending).await {
                    broken.get_or_insert_with(|| format!("publisher {}: {e}", c.publisher));
                }
                c.pending.clear();
            }
        }
        let _ = order.done.send(PacerReport {
            sent_measured,
            error: broken.take(),
        });
    }
}

impl PubConn {
    /// Appends one PUBLISH to `pending`.
    fn queue(&mut self, stamp: u64, tag: u32) {
        let at = self.pending.len();
        self.pending.extend_from_slice(&self.template);
        let p = &mut self.pending[at + self.payload_at..];
        p[0..8].copy_from_slice(&stamp.to_be_bytes());
        p[8..12].copy_from_slice(&tag.to_be_bytes());
        p[12..16].copy_from_slice(&self.sequence.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        if let Some(id_at) = self.packet_id_at {
            self.pending[at + id_at..at + id_at + 2]
                .copy_from_slice(&self.next_packet_id.to_be_bytes());
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        }
        self.sent += 1;
    }
}

/// Reads a publisher's connection: counts PUBACKs; notes when the broker closes it.
async fn publisher_reader(mut read: OwnedReadHalf, acked: Arc<AtomicU64>, closed: Arc<AtomicBool>) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                closed.store(true, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
        }
        loop {
            match decode(&mut buf, ProtocolVersion::V3_1_1, usize::MAX) {
                Ok(Some(Packet::PubAck(_))) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    closed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        buf.reserve(4096);
    }
}

/// Reads a subscriber's connection: each PUBLISH's latency goes to its step's
/// histogram; QoS 1 is acknowledged.
async fn subscriber(stream: tokio::net::TcpStream, stats: Arc<Mutex<SubStats>>, epoch: Instant) {
    let (mut read, mut write) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut acks = BytesMut::new();
    let ended = loop {
        match read.read_buf(&mut buf).await {
            Ok(0) => break "closed by the broker".to_string(),
            Err(e) => break format!("read: {e}"),
            Ok(_) => {}
        }
        let now = epoch.elapsed().as_nanos() as u64;
        let mut failure = None;
        {
            let mut s = lock(&stats);
            loop {
                match decode(&mut buf, ProtocolVersion::V3_1_1, usize::MAX) {
                    Ok(Some(Packet::Publish(p))) => {
                        if let Some((stamp, tag)) = header(&p.payload) {
                            let h = s.by_step.entry(tag).or_insert_with(small_histogram);
                            stats::record(h, now.saturating_sub(stamp) / 1000);
                        }
                        if let Some(id) = p.packet_id {
                            let ack = Packet::PubAck(PubResponse::new(id));
                            if let Err(e) = encode(&ack, ProtocolVersion::V3_1_1, &mut acks) {
                                failure = Some(format!("encode PUBACK: {e}"));
                                break;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(format!("undecodable packet from the broker: {e}"));
                        break;
                    }
                }
            }
        }
        if let Some(f) = failure {
            break f;
        }
        if !acks.is_empty() {
            if let Err(e) = write.write_all(&acks).await {
                break format!("write PUBACK: {e}");
            }
            acks.clear();
        }
        buf.reserve(64 * 1024);
    };
    lock(&stats).ended = Some(ended);
}

/// The send time (ns) and step tag a payload opens with.
fn header(payload: &[u8]) -> Option<(u64, u32)> {
    let stamp = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
    let tag = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?);
    Some((stamp, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_patch_what_the_codec_would_write() {
        let (bytes, payload_at, id_at) = publish_template("a/b", QoS::AtLeastOnce, 16).unwrap();
        // 0x32: PUBLISH QoS 1; 2 + 3 topic bytes, 2 packet id bytes, 16 payload bytes.
        assert_eq!(&bytes[..2], &[0x32, 23]);
        assert_eq!((payload_at, id_at), (9, Some(7)));
        let mut conn_pending = Vec::new();
        conn_pending.extend_from_slice(&bytes);
        let (read, write) = (payload_at, id_at.unwrap());
        conn_pending[write..write + 2].copy_from_slice(&513u16.to_be_bytes());
        conn_pending[read..read + 8].copy_from_slice(&7u64.to_be_bytes());
        let mut buf = BytesMut::from(&conn_pending[..]);
        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 20)
        else {
            panic!("the patched template decodes");
        };
        assert_eq!(p.packet_id, Some(513));
        assert_eq!(&*p.topic, "a/b");
        assert_eq!(header(&p.payload), Some((7, 0)));
        let (bytes, payload_at, id_at) = publish_template("t", QoS::AtMostOnce, 20).unwrap();
        assert_eq!((bytes.len(), payload_at, id_at), (2 + 3 + 20, 5, None));
    }

    #[test]
    fn plans_refuse_what_cannot_run() {
        let args = |qos, payload| Args {
            publishers: None,
            subscribers: None,
            qos,
            payload,
            start_rate: None,
            step_factor: 1.25,
            max_steps: 3,
            warmup: Duration::from_millis(100),
            step: Duration::from_millis(300),
            drain: Duration::from_millis(200),
            p99_limit: None,
            inflight: 64,
            lineup: Lineup::fleetmq_once(2),
            plot: None,
        };
        assert!(Plan::new(Shape::PointToPoint, &args(2, 16)).is_err());
        assert!(Plan::new(Shape::PointToPoint, &args(0, 8)).is_err());
        let plan = Plan::new(Shape::FanOut, &args(1, 256)).unwrap();
        assert_eq!((plan.publishers, plan.subscribers), (1, 1_000));
        assert_eq!(plan.shape.fan(plan.subscribers), 1_000);
        assert_eq!(plan.p99_limit_ms, 100.0);
        assert_eq!(
            Plan::new(Shape::PointToPoint, &args(1, 16))
                .unwrap()
                .p99_limit_ms,
            10.0
        );
        assert!((plan.rate(2) - 20.0 * 1.25 * 1.25).abs() < 1e-9);
    }

    /// A short sweep against a real fleetmq: every message of every step arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_sweep_against_fleetmq_delivers_every_message() {
        let Ok(bin) = crate::fleetmq::find_binary(None) else {
            panic!("the fleetmq binary is needed: cargo build -p fleetmq");
        };
        let dir = tempfile::tempdir().unwrap();
        let bins = PeerBinaries::standard(bin);
        let common = Common {
            fleetmq_bin: bins.fleetmq.clone(),
            work_dir: dir.path().to_path_buf(),
            keep_dirs: false,
            max_load: 100.0,
            load_wait: Duration::ZERO,
        };
        let args = Args {
            publishers: Some(20),
            subscribers: Some(20),
            qos: 1,
            payload: 32,
            start_rate: Some(200.0),
            step_factor: 2.0,
            max_steps: 2,
            warmup: Duration::from_millis(200),
            step: Duration::from_millis(500),
            drain: Duration::from_millis(500),
            // Generous: a debug build on a busy machine; this test checks accounting.
            p99_limit: Some(Duration::from_secs(5)),
            inflight: 64,
            lineup: Lineup::fleetmq_once(2),
            plot: None,
        };
        let plan = Plan::new(Shape::PointToPoint, &args).unwrap();
        let (run, problems) = one_run(PeerKind::Fleetmq, 1, &plan, 2, &bins, &common)
            .await
            .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(run.steps.len(), 2, "{:?}", run.steps);
        for s in &run.steps {
            assert!(s.passed, "{s:?}");
            assert_eq!(s.delivered, s.expected, "{s:?}");
            assert!(s.expected as f64 >= 0.99 * s.target_rate * 0.5, "{s:?}");
        }
        assert_eq!(run.best, Some(1));
    }
}
