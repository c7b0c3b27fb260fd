//! `kafka-egress`: MQTT → Kafka through the bridge.
//!
//! One node with one egress rule taking every benchmark topic to one Kafka topic (a new
//! one per run). Publishers send QoS 1 as fast as PUBACKs free room in their window
//! (or at `--rate`). After a warm-up, the measured window gives the acknowledged rate,
//! the rate Kafka acknowledged records at (the bridge's produced counter), the
//! publish→PUBACK latency and the broker's CPU time per million messages. Then the
//! publishers stop, the outbox empties, and an independent rdkafka consumer reads the
//! whole Kafka topic back: every acknowledged message must be a record there.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;

use crate::fleetmq::{http_get, Cluster, LogIssues, NodeMetrics};
use crate::payload::{us_of, Stamp};
use crate::publisher::{lock, Publisher, PublisherSpec};
use crate::stats::{self, Aim, Latency, Spread};
use crate::sysinfo::{self, note, LoadGate};
use crate::{parse_duration, Common, Outcome};

/// The rule's name in the node's configuration (and in its metrics' labels).
const RULE: &str = "bench";
const PRODUCED_METRIC: &str = "fleetmq_kafka_records_produced_total";

/// `kafka-egress` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Kafka's bootstrap address. When nothing answers there and it is the default,
    /// `deploy/kafka/kafka.sh start` is run first.
    #[arg(long, default_value = "127.0.0.1:19092")]
    pub kafka_bootstrap: String,
    /// The rule's acknowledgement mode: after-outbox or after-kafka.
    #[arg(long, default_value = "after-outbox", value_parser = ["after-outbox", "after-kafka"])]
    pub ack: String,
    /// Publishing clients.
    #[arg(long, default_value_t = 20)]
    pub publishers: usize,
    /// Length of the measured window, after the warm-up.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Traffic before the measured window, excluded from every figure.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Payload bytes per message (at least 20, the stamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Most QoS 1 messages unacknowledged per publisher.
    #[arg(long, default_value_t = 500)]
    pub inflight: u16,
    /// Total messages/s over all publishers; 0: as fast as PUBACKs allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Repetitions, each on a fresh node and a fresh Kafka topic.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// After the window: how long outstanding PUBACKs, the outbox and the read-back may
    /// take.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub drain: Duration,
}

/// Figures of one run.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub run: usize,
    pub kafka_topic: String,
    pub load: LoadGate,
    pub load1_at_end: f64,
    pub window_s: f64,
    pub published: u64,
    pub acked: u64,
    pub acked_per_s: f64,
    /// Records Kafka acknowledged to the bridge within the window, per second.
    pub produced_per_s: f64,
    pub puback_latency: Latency,
    pub cpu_s: f64,
    /// Broker CPU time per acknowledged message (= CPU-seconds per million).
    pub cpu_us_per_message: f64,
    pub rss_mib: f64,
    pub rss_peak_mib: f64,
    /// Records read back from the Kafka topic.
    pub records: u64,
    /// Records of the same message more than once (allowed: at least once).
    pub duplicate_records: u64,
    /// Acknowledged messages with no record.
    pub lost: u64,
    pub lost_samples: Vec<String>,
    /// Messages sent whose PUBACK never came.
    pub unacked: u64,
    /// Records left in the outbox at the end of the drain.
    pub outbox_left: f64,
    pub client_errors: Vec<String>,
    pub node_exits: Vec<String>,
    pub metrics: Vec<NodeMetrics>,
    pub log_issues: Vec<LogIssues>,
}

pub async fn run(args: &Args, common: &Common) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.publishers > 0, "need publishers");
    ensure_kafka(&args.kafka_bootstrap)?;
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    for i in 1..=args.runs {
        note(&format!(
            "kafka-egress run {i}/{}: {} publishers, ack {}",
            args.runs, args.publishers, args.ack
        ));
        match run_once(args, common, i).await {
            Ok(r) => {
                problems.extend(run_problems(&r));
                note(&format!(
                    "run {i}: {:.0} msg/s acknowledged, {:.0} records/s produced; PUBACK {}; \
                     {:.1} CPU-µs/msg; {} records for {} acknowledged, {} lost",
                    r.acked_per_s,
                    r.produced_per_s,
                    r.puback_latency.line(),
                    r.cpu_us_per_message,
                    r.records,
                    r.acked,
                    r.lost
                ));
                runs.push(Ok(r));
            }
            Err(e) => {
                problems.push(format!("run {i} failed: {e:#}"));
                runs.push(Err(format!("{e:#}")));
            }
        }
    }
    let ok: Vec<&RunResult> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
    let figures: [stats::Figure<RunResult>; 8] = [
        ("acked_per_s", |r| r.acked_per_s),
        ("produced_per_s", |r| r.produced_per_s),
        ("puback_p50_ms", |r| r.puback_latency.p50_ms),
        ("puback_p99_ms", |r| r.puback_latency.p99_ms),
        ("cpu_us_per_message", |r| r.cpu_us_per_message),
        ("rss_mib", |r| r.rss_mib),
        ("lost", |r| r.lost as f64),
        ("load1_at_start", |r| r.load.load1_at_start),
    ];
    let summary = stats::summarize(&ok, &figures);
    let aims = aims(&summary);
    let mut text = format!(
        "kafka-egress: 1 node, {} publishers, QoS 1, {} B payload, ack {}, inflight {}/publisher, \
         rate {}, warm-up {:?}, window {:?}, {} run(s) ({} ok)\n",
        args.publishers,
        args.payload,
        args.ack,
        args.inflight,
        if args.rate == 0 {
            "unlimited".to_string()
        } else {
            format!("{} msg/s", args.rate)
        },
        args.warmup,
        args.duration,
        args.runs,
        ok.len()
    );
    for r in &ok {
        text.push_str(&format!(
            "  run {}: {:.0} msg/s acknowledged, {:.0} records/s produced; PUBACK {}; \
             CPU {:.1} µs/msg; RSS {:.0} MiB; {} records, {} duplicate, {} lost; load {:.2}\n",
            r.run,
            r.acked_per_s,
            r.produced_per_s,
            r.puback_latency.line(),
            r.cpu_us_per_message,
            r.rss_mib,
            r.records,
            r.duplicate_records,
            r.lost,
            r.load.load1_at_start
        ));
    }
    let lines: [(&str, &str, usize, &str); 5] = [
        ("acknowledged/s", "acked_per_s", 0, "msg/s"),
        ("produced/s", "produced_per_s", 0, "records/s"),
        ("PUBACK p50", "puback_p50_ms", 2, "ms"),
        ("PUBACK p99", "puback_p99_ms", 2, "ms"),
        ("CPU per message", "cpu_us_per_message", 1, "µs"),
    ];
    text.push_str(&stats::median_lines(&summary, &lines));
    text.push_str(&stats::aim_lines(&aims));
    let runs_json = stats::runs_json(&runs);
    Ok(Outcome {
        scenario: "kafka-egress",
        params: json!({
            "kafka_bootstrap": args.kafka_bootstrap,
            "ack": args.ack,
            "publishers": args.publishers,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "payload_bytes": args.payload,
            "inflight_per_publisher": args.inflight,
            "rate_msgs_per_s": args.rate,
            "runs": args.runs,
        }),
        runs: runs_json,
        summary: serde_json::to_value(&summary)?,
        aims,
        problems,
        text,
    })
}

/// The issue's aim: at least 50,000 messages/s sustained into Kafka.
fn aims(summary: &BTreeMap<&'static str, Spread>) -> Vec<Aim> {
    let mut aims = Vec::new();
    if let (Some(acked), Some(produced)) =
        (summary.get("acked_per_s"), summary.get("produced_per_s"))
    {
        // Sustained: Kafka keeps up with what is acknowledged, not just the outbox.
        let sustained = acked.median.min(produced.median);
        aims.push(Aim {
            aim: "at least 50,000 msg/s of 100-byte QoS 1 acknowledged and produced to Kafka"
                .to_string(),
            measured: format!(
                "{:.0} msg/s acknowledged, {:.0} records/s produced",
                acked.median, produced.median
            ),
            met: sustained >= 50_000.0,
        });
    }
    aims
}

fn run_problems(r: &RunResult) -> Vec<String> {
    let mut p = Vec::new();
    let run = r.run;
    if r.lost > 0 {
        p.push(format!(
            "run {run}: {} acknowledged message(s) not in Kafka, e.g. {:?}",
            r.lost, r.lost_samples
        ));
    }
    if r.unacked > 0 {
        p.push(format!(
            "run {run}: {} message(s) never acknowledged",
            r.unacked
        ));
    }
    if r.outbox_left > 0.0 {
        p.push(format!(
            "run {run}: {} record(s) still in the outbox after the drain",
            r.outbox_left
        ));
    }
    for e in r.client_errors.iter().chain(&r.node_exits) {
        p.push(format!("run {run}: {e}"));
    }
    for l in &r.log_issues {
        if l.error + l.panic > 0 {
            p.push(format!(
                "run {run}: node {} logged {} error(s), {} panic(s): {:?}",
                l.node, l.error, l.panic, l.samples
            ));
        }
    }
    p
}

/// Makes sure Kafka answers at `bootstrap`, starting the workspace's development Kafka
/// when it is the default address and nothing answers.
fn ensure_kafka(bootstrap: &str) -> anyhow::Result<()> {
    if kafka_answers(bootstrap) {
        return Ok(());
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kafka/kafka.sh");
    if bootstrap != "127.0.0.1:19092" || !script.is_file() {
        bail!("no Kafka answers at {bootstrap}: start one (deploy/kafka/kafka.sh start)");
    }
    note("starting Kafka with deploy/kafka/kafka.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("start")
        .status()
        .with_context(|| format!("run {}", script.display()))?;
    if !status.success() || !kafka_answers(bootstrap) {
        bail!("deploy/kafka/kafka.sh start did not give a Kafka at {bootstrap} ({status})");
    }
    Ok(())
}

fn kafka_answers(bootstrap: &str) -> bool {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create();
    consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(5)).is_ok())
}

/// The `value` of `name{rule="bench"}` in a node's `/metrics`.
async fn bridge_metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (status, body) = http_get(admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    let labelled = format!("{name}{{rule=\"{RULE}\"}} ");
    let plain = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&labelled).or_else(|| l.strip_prefix(&plain)))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{name} is not in /metrics"))
}

async fn run_once(args: &Args, common: &Common, run: usize) -> anyhow::Result<RunResult> {
    let load = sysinfo::wait_for_load(common.max_load, common.load_wait).await;
    note(&format!(
        "1-minute load at start: {:.2}",
        load.load1_at_start
    ));
    let kafka_topic = format!(
        "bench-egress-{}-{run}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let config = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\n\n[[kafka.egress]]\nname = \"{RULE}\"\n\
         mqtt_filter = \"bench/#\"\nkafka_topic = \"{kafka_topic}\"\nack = \"{}\"\n",
        args.kafka_bootstrap, args.ack
    );
    let mut cluster = Cluster::start(
        &common.fleetmq_bin,
        1,
        &common.work_dir,
        common.keep_dirs,
        Some(&config),
    )
    .await
    .context("start the node")?;
    let node = cluster.node(1)?;
    let (mqtt, admin) = (node.addrs.mqtt, node.addrs.admin);

    let start = Instant::now() + Duration::from_millis(300);
    let measure_start = start + args.warmup;
    let measure_end = measure_start + args.duration;
    let (window_start_us, window_end_us) = (us_of(measure_start), us_of(measure_end));
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.publishers as f64 / args.rate as f64));
    let mut pubs = Vec::new();
    for p in 0..args.publishers {
        let spec = PublisherSpec {
            index: u32::try_from(p).context("too many publishers")?,
            client_id: format!("bench-pub-{run}-{p}"),
            addr: mqtt,
            topics: std::sync::Arc::new(vec![format!("bench/{run}/p{p}")]),
            offset: 0,
            payload: args.payload,
            inflight: args.inflight,
            start,
            interval,
        };
        pubs.push(
            Publisher::start(spec)
                .await
                .with_context(|| format!("connect publisher {p}"))?,
        );
    }
    if Instant::now() > start + args.warmup / 2 {
        note("warning: connecting the publishers took more than half the warm-up");
    }

    tokio::time::sleep_until(measure_start.into()).await;
    let ticks0 = cluster.cpu_ticks();
    let produced0 = bridge_metric(admin, PRODUCED_METRIC).await?;
    tokio::time::sleep_until(measure_end.into()).await;
    let ticks1 = cluster.cpu_ticks();
    let produced1 = bridge_metric(admin, PRODUCED_METRIC).await?;
    let (rss, rss_peak) = cluster
        .node(1)?
        .pid()
        .and_then(sysinfo::rss_bytes)
        .unwrap_or((0, 0));
    for p in &pubs {
        p.stop_sending();
    }

    // Drain: every PUBACK, then the outbox into Kafka.
    let drain_end = Instant::now() + args.drain;
    while pubs.iter().any(|p| p.outstanding() > 0) && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut outbox_left = f64::NAN;
    while Instant::now() < drain_end {
        outbox_left = bridge_metric(admin, "fleetmq_kafka_outbox_records").await?;
        if outbox_left == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let clk = sysinfo::clock_ticks();
    let cpu_s = ticks1
        .get(&1)
        .zip(ticks0.get(&1))
        .map_or(f64::NAN, |(t1, t0)| t1.saturating_sub(*t0) as f64 / clk);
    let window_s = args.duration.as_secs_f64();
    let mut puback_h = stats::histogram();
    let (mut published, mut acked, mut acked_in_window, mut unacked) = (0, 0, 0u64, 0);
    let mut client_errors = Vec::new();
    let mut acknowledged: Vec<(u32, u64)> = Vec::new();
    for p in &pubs {
        let st = lock(&p.state);
        published += st.sent;
        acked += st.acks.len() as u64;
        unacked += st.sent - st.acks.len() as u64;
        for a in &st.acks {
            acknowledged.push((p.spec.index, a.seq));
            if a.sent_us >= window_start_us && a.sent_us < window_end_us {
                stats::record(&mut puback_h, a.ack_us.saturating_sub(a.sent_us));
            }
            if a.ack_us >= window_start_us && a.ack_us < window_end_us {
                acked_in_window += 1;
            }
        }
        if let Some(e) = &st.error {
            client_errors.push(format!("publisher {}: {e}", p.spec.client_id));
        }
    }
    let left = drain_end.saturating_duration_since(Instant::now());
    let bootstrap = args.kafka_bootstrap.clone();
    let topic = kafka_topic.clone();
    let (records, in_kafka) =
        tokio::task::spawn_blocking(move || read_back(&bootstrap, &topic, left))
            .await
            .context("the read-back task")??;
    let missing: Vec<&(u32, u64)> = acknowledged
        .iter()
        .filter(|m| !in_kafka.contains(m))
        .collect();
    let node_exits = cluster
        .exited()
        .into_iter()
        .map(|(id, status)| format!("node {id} exited with {status}"))
        .collect();
    let metrics = cluster.metrics().await;
    let log_issues = cluster.log_issues();
    let load1_at_end = sysinfo::loadavg().map_or(f64::NAN, |l| l[0]);
    for p in pubs {
        p.shutdown().await;
    }
    if let Some(dir) = cluster.kept_dir() {
        note(&format!("the node's directory kept in {}", dir.display()));
    }
    drop(cluster);
    Ok(RunResult {
        run,
        kafka_topic,
        load,
        load1_at_end,
        window_s,
        published,
        acked,
        acked_per_s: acked_in_window as f64 / window_s,
        produced_per_s: (produced1 - produced0) / window_s,
        puback_latency: Latency::of(&puback_h),
        cpu_s,
        cpu_us_per_message: if acked_in_window > 0 {
            cpu_s / acked_in_window as f64 * 1e6
        } else {
            f64::NAN
        },
        rss_mib: rss as f64 / 1048576.0,
        rss_peak_mib: rss_peak as f64 / 1048576.0,
        records,
        duplicate_records: records.saturating_sub(in_kafka.len() as u64),
        lost: missing.len() as u64,
        lost_samples: missing
            .iter()
            .take(20)
            .map(|(p, seq)| format!("publisher {p} seq {seq}"))
            .collect(),
        unacked,
        outbox_left,
        client_errors,
        node_exits,
        metrics,
        log_issues,
    })
}

/// Reads every record of `topic` (all partitions, from the start, up to the high
/// watermarks read first): how many, and the messages they carry.
fn read_back(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<(u64, HashSet<(u32, u64)>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("fleetmq-bench-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .context("create a kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("kafka metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .context("kafka watermarks")?;
        if high > low {
            ends.insert(*p, high);
            assignment.add_partition_offset(topic, *p, Offset::Offset(low))?;
        }
    }
    consumer.assign(&assignment).context("assign partitions")?;
    let deadline = Instant::now() + timeout;
    let mut records = 0u64;
    let mut seen = HashSet::new();
    let mut done: BTreeMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    while done.values().any(|d| !d) {
        if Instant::now() > deadline {
            bail!(
                "reading {topic} back took longer than the drain allows ({records} records read)"
            );
        }
        let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = polled.context("read a record")?;
        records += 1;
        if let Some(stamp) = message.payload().and_then(Stamp::decode) {
            seen.insert((stamp.publisher, stamp.seq));
        }
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            done.insert(message.partition(), true);
        }
    }
    Ok((records, seen))
}
