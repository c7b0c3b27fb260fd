//! Access rules changed at runtime through one node's admin API (`fleetmq ctl acl
//! set`) are replicated: clients on the other nodes of a three-node cluster (real
//! processes, rumqttc clients) are held to them within moments, a restarted node still
//! holds them, and clearing them returns every node to its file's rules.

use std::time::{Duration, Instant};

use fleetmq_tests::cluster::ctl;
use fleetmq_tests::{unique_id, Cluster, V5Client};
use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
use rumqttc::v5::mqttbytes::QoS;

fn must_ctl(cluster: &Cluster, node: u64, args: &[&str]) -> serde_json::Value {
    let admin = cluster.node(node).admin_addr.to_string();
    let mut all = args.to_vec();
    all.extend(["--admin", &admin, "--output", "json"]);
    let out = ctl(&all, Duration::from_secs(20)).expect("run fleetmq ctl");
    assert!(
        out.status.success(),
        "ctl {args:?} on node {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Subscribes to fresh filters under `prefix` until one is answered `want` (a node
/// follows the rules once it has applied their entry), for at most 10 s.
async fn until_answered(c: &mut V5Client, prefix: &str, want: &SubscribeReasonCode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        let last = c
            .must_subscribe(&format!("{prefix}/{i}"), QoS::AtLeastOnce)
            .await;
        if last.first() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: SUBSCRIBE under {prefix} still answered {last:?}, not {want:?}",
            c.client_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_set_on_one_node_hold_on_every_node_and_survive_a_restart() {
    let mut cluster = Cluster::start();
    let ids = cluster.ids();
    let (asked, elsewhere) = (ids[0], ids[2]);
    let mut c = V5Client::must_connect(cluster.node(elsewhere), &unique_id("t17")).await;
    let granted = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(
        c.must_subscribe("closed/x", QoS::AtLeastOnce).await,
        [granted]
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"no_match": "deny", "rules": [{"permission": "allow", "action": "all", "topic": "open/#"}]}"#,
    )
    .expect("write rules");
    let rules = rules.display().to_string();
    let set = must_ctl(&cluster, asked, &["acl", "set", &rules]);
    assert_eq!(set["source"], "cluster");

    until_answered(&mut c, "closed", &SubscribeReasonCode::NotAuthorized).await;
    assert_eq!(
        c.must_subscribe("open/y", QoS::AtLeastOnce).await,
        [granted]
    );
    // Every node shows them once it has applied their entry.
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(10);
        while must_ctl(&cluster, *id, &["acl", "show"])["source"] != "cluster" {
            assert!(
                Instant::now() < deadline,
                "node {id} does not show the rules"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            must_ctl(&cluster, *id, &["acl", "show"])["no_match"],
            "deny"
        );
    }

    // A node that restarts reads them from its store.
    cluster.stop(elsewhere);
    cluster.restart(elsewhere);
    assert_eq!(
        must_ctl(&cluster, elsewhere, &["acl", "show"])["source"],
        "cluster"
    );
    let mut c = V5Client::must_connect(cluster.node(elsewhere), &unique_id("t17-again")).await;
    assert_eq!(
        c.must_subscribe("closed/z", QoS::AtLeastOnce).await,
        [SubscribeReasonCode::NotAuthorized]
    );

    let cleared = must_ctl(&cluster, ids[1], &["acl", "clear"]);
    assert_eq!(cleared["source"], "file");
    until_answered(&mut c, "closed/again", &granted).await;
}
