//! `$SYS/broker/...` statistics topics, `$`-topics not matched by leading
//! wildcards, the admin endpoints `/healthz` and `/metrics`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleetmq_tests::{names, text, unique_id, BrokerProcess, V4Client, QUIET, WAIT};
use rumqttc::QoS;

const SYS_TOPICS: [&str; 9] = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained/count",
];

/// Collects `$SYS` publishes until every topic of `SYS_TOPICS` was seen (or `WAIT`).
async fn collect_sys(c: &mut V4Client) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while SYS_TOPICS.iter().any(|t| !seen.contains_key(*t)) && Instant::now() < deadline {
        if let Some(p) = c.recv_publish(Duration::from_secs(1)).await {
            seen.insert(p.topic.clone(), text(&p.payload));
        }
    }
    seen
}

fn number(seen: &HashMap<String, String>, topic: &str) -> u64 {
    let v = seen
        .get(topic)
        .unwrap_or_else(|| panic!("{topic} was never published; seen {seen:?}"));
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{topic} payload {v:?} is not a decimal number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_published_with_numbers() {
    let broker = BrokerProcess::start_with_mqtt_config("sys_interval = 1");
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t09-pub")).await;
    publisher
        .must_publish("t09/r1", QoS::AtLeastOnce, true, "r")
        .await;
    publisher
        .must_publish("t09/r2", QoS::AtLeastOnce, true, "r")
        .await;

    let mut c = V4Client::must_connect(&broker, &unique_id("t09-sys")).await;
    c.must_subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    let seen = collect_sys(&mut c).await;
    for t in SYS_TOPICS {
        assert!(
            seen.contains_key(t),
            "{t} was not published within {WAIT:?}; seen {seen:?}"
        );
    }
    assert!(
        !seen["$SYS/broker/version"].trim().is_empty(),
        "empty version"
    );
    for t in &SYS_TOPICS[1..] {
        number(&seen, t);
    }
    assert!(number(&seen, "$SYS/broker/clients/connected") >= 2);
    assert!(number(&seen, "$SYS/broker/subscriptions/count") >= 1);
    assert!(number(&seen, "$SYS/broker/retained/count") >= 2);
    assert!(number(&seen, "$SYS/broker/messages/received") >= 2);

    // They keep coming, and uptime advances.
    let first_uptime = number(&seen, "$SYS/broker/uptime");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut later = HashMap::new();
    for p in c.drain_publishes(Duration::from_millis(300)).await {
        later.insert(p.topic.clone(), text(&p.payload));
    }
    let later_uptime = number(&later, "$SYS/broker/uptime");
    assert!(
        later_uptime > first_uptime,
        "uptime did not advance in 2.5 s: {first_uptime} then {later_uptime}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_retained_for_late_subscribers() {
    let broker = BrokerProcess::start_with_mqtt_config("sys_interval = 1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = V4Client::must_connect(&broker, &unique_id("t09-late")).await;
    c.must_subscribe("$SYS/broker/version", QoS::AtMostOnce)
        .await;
    let p = c.must_recv_publish(Duration::from_millis(800)).await;
    assert!(p.retain, "$SYS topics are published retained");
    assert!(!text(&p.payload).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = BrokerProcess::start_with_mqtt_config("sys_interval = 1");
    let mut hash = V4Client::must_connect(&broker, &unique_id("t09-hash")).await;
    hash.must_subscribe("#", QoS::AtMostOnce).await;
    let mut plus = V4Client::must_connect(&broker, &unique_id("t09-plus")).await;
    plus.must_subscribe("+/broker/#", QoS::AtMostOnce).await;
    plus.must_subscribe("+/broker/version", QoS::AtMostOnce)
        .await;
    let mut sys = V4Client::must_connect(&broker, &unique_id("t09-sys")).await;
    sys.must_subscribe("$SYS/#", QoS::AtMostOnce).await;

    // Two $SYS rounds pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let from_hash = hash.drain_publishes(Duration::from_millis(300)).await;
    let bad: Vec<&String> = from_hash
        .iter()
        .map(|p| &p.topic)
        .filter(|t| t.starts_with('$'))
        .collect();
    assert!(bad.is_empty(), "\"#\" matched $-topics: {bad:?}");
    let from_plus = plus.drain_publishes(Duration::from_millis(300)).await;
    assert!(
        from_plus.is_empty(),
        "\"+/broker/#\" matched: {:?}",
        from_plus.iter().map(|p| &p.topic).collect::<Vec<_>>()
    );
    // Control: $SYS/# does see them, and "#" sees ordinary topics.
    assert!(!sys
        .drain_publishes(Duration::from_millis(300))
        .await
        .is_empty());
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t09-pub")).await;
    publisher
        .must_publish("t09/ordinary", QoS::AtMostOnce, false, "x")
        .await;
    let p = hash.must_recv_publish(WAIT).await;
    assert_eq!(p.topic, "t09/ordinary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_interval_zero_disables_sys_topics() {
    let broker = BrokerProcess::start_with_mqtt_config("sys_interval = 0");
    let mut sys = V4Client::must_connect(&broker, &unique_id("t09-off")).await;
    sys.must_subscribe("$SYS/#", QoS::AtMostOnce).await;
    sys.must_not_recv_publish(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok() {
    let broker = BrokerProcess::start_default();
    let (status, body) = broker.http_get("/healthz").expect("GET /healthz");
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_traffic() {
    let broker = BrokerProcess::start_default();
    let m0 = broker.metrics();
    for name in [
        names::CONNECTIONS_CURRENT,
        names::CONNECTIONS_TOTAL,
        names::MESSAGES_RECEIVED,
        names::MESSAGES_SENT,
        names::BYTES_RECEIVED,
        names::BYTES_SENT,
        names::SESSIONS_CURRENT,
        names::SUBSCRIPTIONS_CURRENT,
        names::RETAINED_CURRENT,
    ] {
        assert!(
            m0.value(name, &[]).is_some(),
            "/metrics does not expose {name}:\n{}",
            m0.text
        );
    }
    let received0 = m0.value(names::MESSAGES_RECEIVED, &[]).unwrap_or(0.0);
    let sent0 = m0.value(names::MESSAGES_SENT, &[]).unwrap_or(0.0);
    let bytes_in0 = m0.value(names::BYTES_RECEIVED, &[]).unwrap_or(0.0);
    let bytes_out0 = m0.value(names::BYTES_SENT, &[]).unwrap_or(0.0);

    let mut sub = V4Client::must_connect(&broker, &unique_id("t09-msub")).await;
    sub.must_subscribe("t09/m/#", QoS::AtLeastOnce).await;
    sub.must_subscribe("t09/other", QoS::AtLeastOnce).await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t09-mpub")).await;
    for i in 0..10 {
        publisher
            .must_publish("t09/m/x", QoS::AtLeastOnce, false, vec![b'x'; 100 + i])
            .await;
    }
    publisher
        .must_publish("t09/m/ret", QoS::AtLeastOnce, true, "retained")
        .await;
    sub.must_recv_publishes(11, WAIT).await;

    broker.must_metric_at_least(names::CONNECTIONS_CURRENT, &[], 2.0, WAIT);
    broker.must_metric_at_least(names::MESSAGES_RECEIVED, &[], received0 + 11.0, WAIT);
    broker.must_metric_at_least(names::MESSAGES_SENT, &[], sent0 + 11.0, WAIT);
    broker.must_metric_at_least(names::BYTES_RECEIVED, &[], bytes_in0 + 1000.0, WAIT);
    broker.must_metric_at_least(names::BYTES_SENT, &[], bytes_out0 + 1000.0, WAIT);
    broker.must_metric_at_least(names::SUBSCRIPTIONS_CURRENT, &[], 2.0, WAIT);
    broker.must_metric_at_least(names::SESSIONS_CURRENT, &[], 2.0, WAIT);
    broker.must_metric_at_least(names::RETAINED_CURRENT, &[], 1.0, WAIT);

    // Clearing the retained message and unsubscribing bring the gauges down.
    publisher
        .must_publish("t09/m/ret", QoS::AtLeastOnce, true, "")
        .await;
    assert!(sub.must_recv_publish(WAIT).await.payload.is_empty());
    sub.must_unsubscribe("t09/other").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let m = broker.metrics();
        let retained = m.value(names::RETAINED_CURRENT, &[]).unwrap_or(-1.0);
        let subs = m.value(names::SUBSCRIPTIONS_CURRENT, &[]).unwrap_or(-1.0);
        if retained == 0.0 && subs == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after clearing/unsubscribing: retained {retained} (want 0), subscriptions {subs} (want 1)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub.must_not_recv_publish(QUIET).await;
}
