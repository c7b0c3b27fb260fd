//! Runs each scenario of `fleetmq-bench` for a second or two, so that CI notices when
//! the tool stops working. No figure is checked against an aim here (CI machines are
//! busy); the runs must go through without a broker problem and produce their JSON.
//!
//! The `fleetmq` binary is the one built in the same target directory and profile as
//! the bench (`cargo build --workspace` builds both), or `$FLEETMQ_BIN`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

fn bench_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleetmq-bench"))
}

fn fleetmq_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLEETMQ_BIN") {
        return PathBuf::from(bin);
    }
    let bench = bench_binary();
    let dir = bench.parent().unwrap_or(Path::new("."));
    let bin = dir.join(format!("fleetmq{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the fleetmq binary was not found at {}; run `cargo build -p fleetmq` (same profile) \
         first, or set FLEETMQ_BIN",
        bin.display()
    );
    bin
}

/// One scenario at a time: each starts its own nodes, and CI machines have few cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the bench with `args` after the global options; returns its JSON result.
fn must_run(args: &[&str]) -> Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("result.json");
    let output = Command::new(bench_binary())
        .arg("--fleetmq-bin")
        .arg(fleetmq_binary())
        .arg("--out")
        .arg(&out)
        .arg("--work-dir")
        .arg(dir.path())
        .args(["--load-wait", "0s"])
        .args(args)
        .output()
        .expect("run fleetmq-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fleetmq-bench {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let text = std::fs::read_to_string(&out).expect("the JSON result");
    serde_json::from_str(&text).expect("valid JSON")
}

fn median(result: &Value, key: &str) -> f64 {
    result["summary"][key]["median"]
        .as_f64()
        .unwrap_or_else(|| panic!("summary.{key}.median in {result:#}"))
}

#[test]
fn persistent_qos1_across_three_nodes() {
    let r = must_run(&[
        "persistent-qos1",
        "--nodes",
        "3",
        "--publishers",
        "3",
        "--subscribers",
        "6",
        "--warmup",
        "500ms",
        "--duration",
        "4s",
        "--offline-fraction",
        "0.34",
        "--offline-at",
        "300ms",
        "--offline-for",
        "1s",
        "--drain",
        "10s",
        "--runs",
        "1",
    ]);
    assert_eq!(r["scenario"], "persistent-qos1");
    assert!(median(&r, "delivered_per_s") > 0.0, "{r:#}");
    assert!(median(&r, "delivery_p99_ms") > 0.0, "{r:#}");
    assert_eq!(median(&r, "lost"), 0.0, "{r:#}");
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r:#}");
    // Two subscribers went away for a second and came back to their sessions, which
    // had kept what was published for them meanwhile.
    assert_eq!(r["runs"][0]["offline_subscribers"], 2, "{r:#}");
    assert_eq!(r["runs"][0]["sessions_resumed"], 2, "{r:#}");
    assert!(median(&r, "backlog_delivered") > 0.0, "{r:#}");
    // The live figures leave the backlog out, and only the backlog.
    let run = &r["runs"][0];
    let count = |key: &str| run[key]["count"].as_u64().unwrap_or(0);
    let (all, live) = (count("delivery_latency"), count("live_delivery_latency"));
    assert!(live > 0 && live < all, "live {live} of {all}: {r:#}");
    let backlog = run["backlog_delivered"].as_u64().unwrap_or(0);
    assert!(
        all - live <= backlog,
        "{} left out, backlog {backlog}: {r:#}",
        all - live
    );
    let max = |key: &str| run[key]["max_ms"].as_f64().unwrap_or(f64::NAN);
    assert!(
        max("live_delivery_latency") <= max("delivery_latency"),
        "{r:#}"
    );
}

#[test]
fn failover_of_the_leader() {
    let r = must_run(&[
        "failover",
        "--clients-per-node",
        "5",
        "--settle",
        "500ms",
        "--publish-interval",
        "20ms",
        "--runs",
        "1",
    ]);
    assert_eq!(r["scenario"], "failover");
    assert!(median(&r, "leader_ms") > 0.0, "{r:#}");
    assert!(median(&r, "all_resumed_ms").is_finite(), "{r:#}");
    assert!(median(&r, "first_puback_ms").is_finite(), "{r:#}");
    assert_eq!(r["runs"][0]["resumed"], 5, "{r:#}");
}

#[test]
fn kafka_egress_through_the_bridge() {
    // The development Kafka (deploy/kafka/kafka.sh): the bench starts it when nothing
    // answers at the default address.
    let r = must_run(&[
        "kafka-egress",
        "--publishers",
        "2",
        "--inflight",
        "50",
        "--warmup",
        "500ms",
        "--duration",
        "1s",
        "--drain",
        "60s",
        "--runs",
        "1",
    ]);
    assert_eq!(r["scenario"], "kafka-egress");
    assert!(median(&r, "acked_per_s") > 0.0, "{r:#}");
    assert!(median(&r, "produced_per_s") > 0.0, "{r:#}");
    assert_eq!(median(&r, "lost"), 0.0, "{r:#}");
    let run = &r["runs"][0];
    let acked = run["acked"].as_u64().expect("acked");
    assert!(acked > 0, "{r:#}");
    assert!(run["records"].as_u64() >= Some(acked), "{r:#}");
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r:#}");
}
