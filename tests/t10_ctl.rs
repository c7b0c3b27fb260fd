//! `fleetmq ctl` against running nodes, through their admin API: `status` (members,
//! leader and state) and `members list|add|remove`, for people and as JSON.

use std::net::SocketAddr;
use std::process::Command;

use fleetmq_tests::broker::free_port;
use fleetmq_tests::v4::V4Client;
use fleetmq_tests::{broker_binary, BrokerOptions, BrokerProcess};
use rumqttc::QoS;

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
    let admin = broker.admin_addr.to_string();

    let out = ctl(&["status", "--admin", &admin, "--output", "json"]);
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

    assert_eq!(status["ready"], true);
    assert_eq!(status["draining"], false);

    let out = ctl(&["--admin", &admin, "status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node 1 is leader"), "{text}");
    assert!(text.contains("leader: 1"), "{text}");
    assert!(text.contains(&grpc), "{text}");
}

#[test]
fn status_of_an_unreachable_node_fails_and_says_where() {
    let out = ctl(&["status", "--admin", "127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("--admin"),
        "{err}"
    );
}

/// Runs `fleetmq ctl` and returns its stdout, panicking with its stderr when it fails.
fn must_ctl(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        out.status.success(),
        "fleetmq ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn must_ctl_json(args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    serde_json::from_str(&must_ctl(&args)).expect("JSON output")
}

/// `(id, role)` of every member in a `members` JSON array, by id.
fn roles(value: &serde_json::Value) -> Vec<(u64, String)> {
    let mut roles: Vec<(u64, String)> = value["members"]
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().expect("member id"),
                m["role"].as_str().expect("member role").to_owned(),
            )
        })
        .collect();
    roles.sort();
    roles
}

#[test]
fn members_list_shows_the_single_node_as_leader() {
    let broker = BrokerProcess::start_default();
    let grpc = broker.grpc_addr.to_string();
    let admin = broker.admin_addr.to_string();

    let list = must_ctl_json(&["members", "list", "--admin", &admin]);
    assert_eq!(list["leader_id"], 1);
    assert_eq!(roles(&list), vec![(1, "leader".to_owned())]);
    assert_eq!(list["members"][0]["address"], grpc.as_str());
    // Each member's own view, asked at its address.
    assert_eq!(list["members"][0]["reachable"], true);
    assert_eq!(list["members"][0]["state"], "leader");
    assert!(list["members"][0]["last_applied"].as_u64().is_some());

    let text = must_ctl(&["--admin", &admin, "members", "list"]);
    assert!(text.contains("leader: 1"), "{text}");
    assert!(text.contains(&grpc) && text.contains("leader"), "{text}");
}

#[test]
fn members_changes_that_cannot_be_made_fail_with_the_reason() {
    let broker = BrokerProcess::start_default();
    let admin = broker.admin_addr.to_string();

    let out = ctl(&["members", "remove", "1", "--admin", &admin]);
    assert!(!out.status.success(), "removing the only voter must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("removing node 1") && err.contains(&admin),
        "{err}"
    );

    let out = ctl(&["members", "remove", "7", "--admin", &admin]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node 7 is not a member"), "{err}");

    let out = ctl(&["members", "add", "2", "no-port", "--admin", &admin]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a host:port address"), "{err}");

    // Nothing changed.
    let list = must_ctl_json(&["members", "list", "--admin", &admin]);
    assert_eq!(roles(&list), vec![(1, "leader".to_owned())]);
}

/// Node 2, launched to join `first`: it knows the cluster but is not in it yet; not
/// the lowest id, it waits to be added instead of starting a group of its own.
fn launch_second(first: &BrokerProcess) -> BrokerProcess {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let grpc = loopback(free_port());
    let second = BrokerProcess::launch(
        BrokerOptions::new()
            .node_id(2)
            .args([
                "--peers".to_owned(),
                format!("1={},2={grpc}", first.grpc_addr),
            ])
            .addrs(loopback(free_port()), loopback(free_port()), grpc),
    )
    .expect("launch node 2");
    assert_eq!(second.grpc_addr, grpc);
    second
}

#[test]
fn members_add_and_remove_a_second_node_through_either_node() {
    let first = BrokerProcess::start_default();
    let first_admin = first.admin_addr.to_string();
    let mut second = launch_second(&first);
    let second_grpc = second.grpc_addr.to_string();
    let second_admin = second.admin_addr.to_string();

    // The leader waits until node 2 has caught up, however long node 2 takes to start.
    let added = must_ctl_json(&["members", "add", "2", &second_grpc, "--admin", &first_admin]);
    assert_eq!(
        roles(&added),
        vec![(1, "leader".to_owned()), (2, "voter".to_owned())]
    );
    assert_eq!(added["leader_id"], 1);

    // Node 2 serves MQTT once it has joined and caught up.
    second
        .wait_listening(fleetmq_tests::WAIT)
        .expect("node 2 listens after joining");

    // The new member knows the membership and the leader.
    let deadline = std::time::Instant::now() + fleetmq_tests::WAIT;
    loop {
        let list = must_ctl_json(&["members", "list", "--admin", &second_admin]);
        if list["leader_id"] == 1
            && roles(&list) == vec![(1, "leader".to_owned()), (2, "voter".to_owned())]
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 does not see the new membership: {list:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Asked through the follower, `remove` follows its answer to the leader.
    let text = must_ctl(&["members", "remove", "2", "--admin", &second_admin]);
    assert!(text.contains("node 2 removed"), "{text}");
    let list = must_ctl_json(&["members", "list", "--admin", &first_admin]);
    assert_eq!(roles(&list), vec![(1, "leader".to_owned())]);
}

/// A node alone keeps its clean sessions in memory only (no other node routes to
/// them); the moment a second one joins it stores them, so the newcomer routes to
/// subscriptions made before it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_routes_to_clean_sessions_subscribed_before_it_came() {
    let first = BrokerProcess::start_default();
    let mut sub = V4Client::must_connect(&first, "t10-before-join-sub").await;
    sub.must_subscribe("t10/before-join/#", QoS::AtLeastOnce)
        .await;

    let mut second = launch_second(&first);
    let second_grpc = second.grpc_addr.to_string();
    let first_admin = first.admin_addr.to_string();
    let added = tokio::task::spawn_blocking(move || {
        must_ctl_json(&["members", "add", "2", &second_grpc, "--admin", &first_admin])
    })
    .await
    .expect("ctl");
    assert_eq!(
        roles(&added),
        vec![(1, "leader".to_owned()), (2, "voter".to_owned())]
    );
    second
        .wait_listening(fleetmq_tests::WAIT)
        .expect("node 2 listens after joining");

    let mut publisher = V4Client::must_connect(&second, "t10-before-join-pub").await;
    publisher
        .must_publish(
            "t10/before-join/x",
            QoS::AtLeastOnce,
            false,
            "published on the newcomer",
        )
        .await;
    let got = sub.recv_publish(fleetmq_tests::WAIT).await;
    assert_eq!(
        got.map(|p| String::from_utf8_lossy(&p.payload).into_owned()),
        Some("published on the newcomer".to_owned()),
        "the subscription made while node 1 was alone reaches node 2's router"
    );
    assert!(
        sub.recv_publish(std::time::Duration::from_millis(500))
            .await
            .is_none(),
        "delivered once"
    );

    // And the other way: the newcomer stores its clean sessions, node 1 routes to them.
    let mut newcomer_sub = V4Client::must_connect(&second, "t10-after-join-sub").await;
    newcomer_sub
        .must_subscribe("t10/after-join/#", QoS::AtLeastOnce)
        .await;
    let mut first_pub = V4Client::must_connect(&first, "t10-after-join-pub").await;
    first_pub
        .must_publish("t10/after-join/x", QoS::AtLeastOnce, false, "from node 1")
        .await;
    let got = newcomer_sub.recv_publish(fleetmq_tests::WAIT).await;
    assert_eq!(
        got.map(|p| String::from_utf8_lossy(&p.payload).into_owned()),
        Some("from node 1".to_owned())
    );
}
