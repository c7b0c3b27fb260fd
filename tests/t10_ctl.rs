//! `fleetmq ctl status` against a running node: members, leader and state, for people
//! and as JSON.

use std::process::Command;

use fleetmq_tests::{broker_binary, BrokerProcess};

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(broker_binary())
        .arg("ctl")
        .args(args)
        .output()
        .expect("run fleetmq ctl")
}

#[test]
fn status_shows_the_single_node_as_leader_and_only_member() {
    let broker = BrokerProcess::start_default();
    let grpc = broker.grpc_addr.to_string();

    let out = ctl(&["status", "--grpc", &grpc, "--output", "json"]);
    assert!(
        out.status.success(),
        "ctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["state"], "leader");
    assert_eq!(status["leader_id"], 1);
    let members = status["members"].as_array().expect("members array");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["id"], 1);
    assert_eq!(members[0]["role"], "leader");
    assert_eq!(members[0]["address"], grpc.as_str());
    assert!(status["last_applied"].as_u64().is_some_and(|i| i >= 1));

    let out = ctl(&["--grpc", &grpc, "status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node 1 is leader"), "{text}");
    assert!(text.contains("leader: 1"), "{text}");
    assert!(text.contains(&grpc), "{text}");
}

#[test]
fn status_of_an_unreachable_node_fails_and_says_where() {
    let out = ctl(&["status", "--grpc", "127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("--grpc"),
        "{err}"
    );
}
