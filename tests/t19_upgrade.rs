//! A data directory written by the previous release opens with this one: its Raft log
//! (format 2, raw writes) is upgraded in place and replayed, and nothing stored is lost:
//! the persistent session, the QoS 1 and QoS 2 messages queued for it, the retained
//! message. The directory is `fixtures/data-format2` (how it was made: fixtures/README.md).

use std::path::Path;

use fleetmq_tests::{v4_options, BrokerOptions, BrokerProcess, V4Client, WAIT};
use rumqttc::QoS;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the data directory");
    for entry in std::fs::read_dir(from).expect("read the fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a fixture file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_previous_release_is_upgraded_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data-format2"),
        &data,
    );
    let broker = BrokerProcess::start(BrokerOptions::new().storage("sled").data_dir(&data));

    let mut opts = v4_options(&broker, "watcher");
    opts.set_clean_session(false);
    let mut watcher = V4Client::must_connect_with(opts).await;
    assert!(watcher.connack.session_present, "the stored session");
    let queued = watcher.must_recv_publishes(2, WAIT).await;
    let got: Vec<(String, String, QoS)> = queued
        .iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("alerts/door".into(), "open".into(), QoS::AtLeastOnce),
            ("alerts/window".into(), "closed".into(), QoS::ExactlyOnce),
        ]
    );

    let mut reader = V4Client::must_connect(&broker, "reader").await;
    reader.must_subscribe("status/#", QoS::AtLeastOnce).await;
    let retained = reader.must_recv_publish(WAIT).await;
    assert_eq!(retained.topic, "status/gw");
    assert_eq!(&retained.payload[..], b"online");
    assert!(retained.retain);

    let log = std::fs::read_to_string(broker.log_path()).expect("read the node's log");
    assert!(
        log.contains("raft log upgraded from format 2 to 3"),
        "the log says what happened to the data directory"
    );
    // The earlier release's sled store became the state machine's snapshot file.
    assert!(
        log.contains("the state kept by an earlier release is now this node's snapshot file"),
        "the log says where the store went"
    );
    assert!(
        data.join("raft/state-snapshot").is_file(),
        "the snapshot file"
    );
    assert!(!data.join("store").exists(), "the old store is moved aside");
    assert!(data.join("store.before-upgrade").is_dir());
    // And its sled Raft log became segment files.
    assert!(
        log.contains("raft log moved from sled into segment files"),
        "the log says where the Raft log went"
    );
    assert!(data.join("raft/raft-wal").is_dir(), "the segment log");
    assert!(data.join("raft/raft-log.before-upgrade").is_dir());
    assert!(!data.join("raft/raft-log").exists());

    // After the upgrade the state lives in memory: a SIGKILL loses it, and the node
    // comes back from the snapshot file and the log after it.
    drop(watcher);
    drop(reader);
    let mut broker = broker;
    broker.restart();
    let mut opts = v4_options(&broker, "watcher");
    opts.set_clean_session(false);
    let watcher = V4Client::must_connect_with(opts).await;
    assert!(
        watcher.connack.session_present,
        "the session survives the restart after the upgrade"
    );
    let mut reader = V4Client::must_connect(&broker, "reader-2").await;
    reader.must_subscribe("status/#", QoS::AtLeastOnce).await;
    let retained = reader.must_recv_publish(WAIT).await;
    assert_eq!(&retained.payload[..], b"online");
}
