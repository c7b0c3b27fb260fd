//! `fleetmq-bench`: starts real `fleetmq` processes on this machine, drives them with
//! MQTT clients and reports figures (BENCHMARKS.md).
//!
//! Each scenario is a subcommand. It prints a human summary on stdout and, with
//! `--out FILE`, writes every run's figures, the machine and the aims as JSON. The exit
//! status is 0 when the runs went through without a broker problem (lost
//! acknowledged messages, a session not resumed, dropped messages, a node exiting,
//! client connections closed by the broker), 2 when there was one (listed under
//! "problems"), 1 when the tool itself failed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

mod clients;
mod failover;
mod fleetmq;
mod kafka_egress;
mod payload;
mod peers;
mod persistent;
mod plot;
mod publisher;
mod raw;
mod stats;
mod storm;
mod sysinfo;
mod traffic;

#[derive(Parser)]
#[command(
    name = "fleetmq-bench",
    version,
    about = "Benchmarks of real fleetmq processes: throughput, latency, failover"
)]
struct Cli {
    /// The fleetmq binary. Default: the one built next to this executable, else
    /// target/release/fleetmq in the workspace.
    #[arg(long, env = "FLEETMQ_BIN", global = true)]
    fleetmq_bin: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// The git revision the fleetmq binary was built from, for the record. Default:
    /// the workspace's HEAD now (`git rev-parse --short HEAD`), which is wrong when
    /// HEAD moved since the binary was built.
    #[arg(long, global = true)]
    fleetmq_revision: Option<String>,
    /// Where the nodes' data directories are created (a local disk: sled fsyncs).
    /// Default: the system's temporary directory.
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// Keep the nodes' directories (data and logs) after each run.
    #[arg(long, global = true)]
    keep_dirs: bool,
    /// Before each run, wait until the 1-minute load average is at most this.
    #[arg(long, default_value_t = 1.0, global = true)]
    max_load: f64,
    /// The longest wait for the load to drop; the run then goes ahead and its result
    /// records the load. 0s: do not wait.
    #[arg(long, default_value = "180s", value_parser = parse_duration, global = true)]
    load_wait: Duration,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Replicated QoS 1 to persistent sessions: delivered msg/s, publish→PUBACK and
    /// publish→delivery latency, broker CPU and memory, and no loss.
    #[command(name = "persistent-qos1")]
    PersistentQos1(persistent::Args),
    /// SIGKILL the leader of three nodes: time to a new leader, to every client of the
    /// dead node resumed on a survivor, to the first PUBACK.
    Failover(failover::Args),
    /// MQTT → Kafka through the bridge: acknowledged and produced msg/s, PUBACK
    /// latency, broker CPU per message, and every acknowledged message read back.
    #[command(name = "kafka-egress")]
    KafkaEgress(kafka_egress::Args),
    /// Side by side with Mosquitto and rumqttd: N idle connections opened at a fixed
    /// rate, one subscription each: connect rate kept, handshake latency, broker CPU,
    /// broker memory per idle connection.
    #[command(name = "connection-storm")]
    ConnectionStorm(storm::Args),
    /// Side by side: publisher i to subscriber i (1,000 pairs by default), the rate
    /// raised step by step until p99 latency passes the limit.
    #[command(name = "point-to-point")]
    PointToPoint(traffic::Args),
    /// Side by side: 1 (or --publishers) publishers to 1,000 subscribers of one topic.
    #[command(name = "fan-out")]
    FanOut(traffic::Args),
    /// Side by side: 1,000 publishers to a $share group of 5 subscribers.
    #[command(name = "fan-in")]
    FanIn(traffic::Args),
}

/// Settings every scenario uses.
pub struct Common {
    pub fleetmq_bin: PathBuf,
    pub work_dir: PathBuf,
    pub keep_dirs: bool,
    pub max_load: f64,
    pub load_wait: Duration,
}

/// What a scenario produced.
pub struct Outcome {
    pub scenario: &'static str,
    pub params: serde_json::Value,
    pub runs: Vec<serde_json::Value>,
    pub summary: serde_json::Value,
    pub aims: Vec<stats::Aim>,
    /// Broker problems seen: losses, errors, exits.
    pub problems: Vec<String>,
    /// The human summary.
    pub text: String,
}

/// "20s", "500ms", "2m", "1.5s" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 20s, 500ms or 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetmq-bench: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // Dropping the runtime drops the scenario's clusters, which kill their nodes.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("fleetmq-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the scenario; `Ok(false)` when it saw broker problems.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let fleetmq_bin = fleetmq::find_binary(cli.fleetmq_bin)?;
    let fleetmq_bin = fleetmq_bin.canonicalize().unwrap_or(fleetmq_bin);
    let work_dir = cli.work_dir.unwrap_or_else(std::env::temp_dir);
    let mut machine = sysinfo::Machine::describe(&fleetmq_bin, &work_dir);
    if let Some(rev) = cli.fleetmq_revision {
        machine.fleetmq_revision = rev;
    }
    sysinfo::note(&format!(
        "fleetmq {} ({}, {} build, revision {}); data in {} ({})",
        fleetmq_bin.display(),
        machine.fleetmq_version,
        machine.fleetmq_profile,
        machine.fleetmq_revision,
        work_dir.display(),
        machine.work_dir_fs
    ));
    let common = Common {
        fleetmq_bin,
        work_dir,
        keep_dirs: cli.keep_dirs,
        max_load: cli.max_load,
        load_wait: cli.load_wait,
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let outcome = match &cli.scenario {
        Scenario::PersistentQos1(args) => persistent::run(args, &common).await?,
        Scenario::Failover(args) => failover::run(args, &common).await?,
        Scenario::KafkaEgress(args) => kafka_egress::run(args, &common).await?,
        Scenario::ConnectionStorm(args) => storm::run(args, &common).await?,
        Scenario::PointToPoint(args) => {
            traffic::run(traffic::Shape::PointToPoint, args, &common).await?
        }
        Scenario::FanOut(args) => traffic::run(traffic::Shape::FanOut, args, &common).await?,
        Scenario::FanIn(args) => traffic::run(traffic::Shape::FanIn, args, &common).await?,
    };
    let mut text = outcome.text.clone();
    if outcome.problems.is_empty() {
        text.push_str("  problems: none\n");
    } else {
        text.push_str(&format!("  PROBLEMS ({}):\n", outcome.problems.len()));
        for p in &outcome.problems {
            text.push_str(&format!("  - {p}\n"));
        }
    }
    let report = json!({
        "scenario": outcome.scenario,
        "started_unix": started,
        "params": outcome.params,
        "machine": machine,
        "max_load": common.max_load,
        "summary": outcome.summary,
        "aims": outcome.aims,
        "problems": outcome.problems,
        "runs": outcome.runs,
    });
    if let Some(path) = &cli.out {
        let body = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, body + "\n").with_context(|| format!("write {}", path.display()))?;
        text.push_str(&format!("  results: {}\n", path.display()));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(outcome.problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
