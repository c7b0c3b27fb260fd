//! Persistent sessions (3.1.1 clean session = 0, MQTT 5 clean start + session
//! expiry): subscriptions kept, QoS 1/2 queued while away, session present; clean
//! sessions discarding state; session expiry; the bounded offline queue and its
//! two policies.

use std::time::Duration;

use fleetmq_codec::{
    Disconnect, DisconnectProperties, Packet, ProtocolVersion, QoS as CQoS, ReasonCode,
};
use fleetmq_tests::raw::connect_packet;
use fleetmq_tests::{
    names, text, unique_id, v4_options, v5_options, BrokerOptions, BrokerProcess, RawClient,
    V4Client, V5Client, QUIET, WAIT,
};
use rumqttc::QoS;

fn persistent_v4(broker: &BrokerProcess, id: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(broker, id);
    o.set_clean_session(false);
    o
}

fn persistent_v5(broker: &BrokerProcess, id: &str, expiry: u32) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(broker, id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(expiry));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_queues_qos1_and_qos2_while_away() {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-p4");
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    assert!(!sub.connack.session_present);
    sub.must_subscribe("t03/p4", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = V4Client::must_connect(&broker, &unique_id("t03-pub")).await;
    publisher
        .must_publish("t03/p4", QoS::AtLeastOnce, false, "one")
        .await;
    publisher
        .must_publish("t03/p4", QoS::ExactlyOnce, false, "two")
        .await;

    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    assert!(sub.connack.session_present, "session_present must be 1");
    let a = sub.must_recv_publish(WAIT).await;
    let b = sub.must_recv_publish(WAIT).await;
    assert_eq!(
        (text(&a.payload), a.qos),
        ("one".to_string(), QoS::AtLeastOnce)
    );
    assert_eq!(
        (text(&b.payload), b.qos),
        ("two".to_string(), QoS::ExactlyOnce)
    );
    sub.must_not_recv_publish(QUIET).await;

    // The subscription itself was kept: no new SUBSCRIBE needed.
    publisher
        .must_publish("t03/p4", QoS::AtLeastOnce, false, "three")
        .await;
    assert_eq!(text(&sub.must_recv_publish(WAIT).await.payload), "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_persistent_session_queues_qos1_and_qos2_while_away() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-p5");
    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &id, 300)).await;
    assert!(!sub.connack.session_present);
    sub.must_subscribe("t03/p5", Q5::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = V5Client::must_connect(&broker, &unique_id("t03-pub5")).await;
    publisher
        .must_publish("t03/p5", Q5::AtLeastOnce, false, "one")
        .await;
    publisher
        .must_publish("t03/p5", Q5::ExactlyOnce, false, "two")
        .await;

    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &id, 300)).await;
    assert!(sub.connack.session_present, "session_present must be 1");
    let got: Vec<String> = sub
        .drain_publishes(QUIET)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(got, vec!["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_clean_session_discards_the_stored_session() {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-clean");
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    sub.must_subscribe("t03/clean", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t03-pub")).await;
    publisher
        .must_publish("t03/clean", QoS::AtLeastOnce, false, "lost")
        .await;

    // Clean session: no session present, no queued message, no subscription.
    let mut sub = V4Client::must_connect(&broker, &id).await;
    assert!(!sub.connack.session_present);
    sub.must_not_recv_publish(QUIET).await;
    publisher
        .must_publish("t03/clean", QoS::AtLeastOnce, false, "unsubscribed")
        .await;
    sub.must_not_recv_publish(QUIET).await;
    sub.disconnect().await;

    // And the clean session left nothing behind.
    let sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    assert!(!sub.connack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_clean_start_discards_the_stored_session() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-cs5");
    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &id, 300)).await;
    sub.must_subscribe("t03/cs5", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t03-pub5")).await;
    publisher
        .must_publish("t03/cs5", Q5::AtLeastOnce, false, "lost")
        .await;

    let mut o = v5_options(&broker, &id);
    o.set_clean_start(true);
    o.set_session_expiry_interval(Some(300));
    let mut sub = V5Client::must_connect_with(o).await;
    assert!(!sub.connack.session_present);
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expires_after_its_expiry_interval() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = BrokerProcess::start_default();
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t03-pub5")).await;

    // Control: away for less than its expiry, a session and its queue are there.
    let kept = unique_id("t03-exp-kept");
    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &kept, 30)).await;
    sub.must_subscribe("t03/exp/kept", Q5::AtLeastOnce).await;
    sub.disconnect().await;

    // Away for more than the expiry: gone.
    let gone = unique_id("t03-exp-gone");
    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &gone, 2)).await;
    sub.must_subscribe("t03/exp/gone", Q5::AtLeastOnce).await;
    sub.disconnect().await;

    publisher
        .must_publish("t03/exp/kept", Q5::AtLeastOnce, false, "kept")
        .await;
    publisher
        .must_publish("t03/exp/gone", Q5::AtLeastOnce, false, "gone")
        .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &kept, 30)).await;
    assert!(
        sub.connack.session_present,
        "reconnected within the expiry interval"
    );
    assert_eq!(text(&sub.must_recv_publish(WAIT).await.payload), "kept");

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &gone, 2)).await;
    assert!(
        !sub.connack.session_present,
        "the session should have expired after 2 s"
    );
    sub.must_not_recv_publish(QUIET).await;
    publisher
        .must_publish("t03/exp/gone", Q5::AtLeastOnce, false, "after")
        .await;
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_zero_ends_the_session_at_disconnect() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-exp0");
    let mut o = v5_options(&broker, &id);
    o.set_clean_start(false);
    let mut sub = V5Client::must_connect_with(o.clone()).await;
    sub.must_subscribe("t03/exp0", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t03-pub5")).await;
    publisher
        .must_publish("t03/exp0", Q5::AtLeastOnce, false, "x")
        .await;
    let mut sub = V5Client::must_connect_with(o).await;
    assert!(
        !sub.connack.session_present,
        "no expiry interval: the session ended with the connection"
    );
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_can_shorten_the_session_expiry() {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-discexp");
    let mut connect = connect_packet(ProtocolVersion::V5, &id, false, 60);
    connect.properties.session_expiry_interval = Some(300);
    let (mut c, _) = RawClient::must_connect_with(broker.mqtt_addr, connect.clone()).await;
    c.must_subscribe(1, "t03/discexp", CQoS::AtLeastOnce).await;
    c.must_send(Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::Success,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..DisconnectProperties::default()
        },
    }))
    .await;
    c.must_be_closed(WAIT).await;
    let (_c, ack) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    assert!(
        !ack.session_present,
        "DISCONNECT with Session Expiry Interval 0 must end the session"
    );
}

async fn queue_bound(policy: Option<&str>) -> (BrokerProcess, Vec<String>) {
    let mut keys = "max_queued_messages = 5\n".to_string();
    if let Some(p) = policy {
        keys.push_str(&format!("queue_full_policy = \"{p}\"\n"));
    }
    let broker = BrokerProcess::start(BrokerOptions::new().mqtt_config(&keys));
    let id = unique_id("t03-queue");
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    sub.must_subscribe("t03/queue", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    // Publish only once the broker has the subscriber offline; otherwise the first
    // message may still go in flight to the closing connection (and be resent later).
    broker.must_metric_at_least(
        names::CONNECTIONS_CLOSED,
        &[("reason", "client_disconnect")],
        1.0,
        WAIT,
    );

    let mut publisher = V4Client::must_connect(&broker, &unique_id("t03-pub")).await;
    for i in 0..10 {
        publisher
            .must_publish("t03/queue", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    assert!(sub.connack.session_present);
    let got = sub
        .drain_publishes(Duration::from_secs(3))
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    broker.must_metric_at_least(
        names::MESSAGES_DROPPED,
        &[("reason", "queue_full")],
        5.0,
        WAIT,
    );
    (broker, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_bounded_and_drops_new_messages_by_default() {
    let (_broker, got) = queue_bound(None).await;
    assert_eq!(
        got,
        vec!["m0", "m1", "m2", "m3", "m4"],
        "drop-new keeps the oldest 5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_drop_oldest_keeps_the_newest_messages() {
    let (_broker, got) = queue_bound(Some("drop-oldest")).await;
    assert_eq!(
        got,
        vec!["m5", "m6", "m7", "m8", "m9"],
        "drop-oldest keeps the newest 5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_drop_new_policy_is_accepted() {
    let (_broker, got) = queue_bound(Some("drop-new")).await;
    assert_eq!(got, vec!["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_count_metric_counts_offline_persistent_sessions() {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-count");
    let mut sub = V4Client::must_connect_with(persistent_v4(&broker, &id)).await;
    sub.must_subscribe("t03/count/a", QoS::AtLeastOnce).await;
    sub.must_subscribe("t03/count/b", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    // The session lives on while its client is away, with its two subscriptions.
    broker.must_metric_at_least(names::SESSIONS_CURRENT, &[], 1.0, WAIT);
    broker.must_metric_at_least(names::SUBSCRIPTIONS_CURRENT, &[], 2.0, WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_is_capped_by_max_session_expiry_interval() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = BrokerProcess::start_with_mqtt_config("max_session_expiry_interval = 2");
    // MQTT 5: asked 300, granted 2, and told so in CONNACK.
    let id5 = unique_id("t03-cap5");
    let mut sub = V5Client::must_connect_with(persistent_v5(&broker, &id5, 300)).await;
    let granted = sub
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.session_expiry_interval);
    assert_eq!(
        granted,
        Some(2),
        "CONNACK must carry the granted Session Expiry Interval"
    );
    sub.must_subscribe("t03/cap", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    // MQTT 3.1.1 persistent sessions get the maximum.
    let id4 = unique_id("t03-cap4");
    let mut sub4 = V4Client::must_connect_with(persistent_v4(&broker, &id4)).await;
    sub4.must_subscribe("t03/cap", QoS::AtLeastOnce).await;
    sub4.disconnect().await;

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let sub = V5Client::must_connect_with(persistent_v5(&broker, &id5, 300)).await;
    assert!(
        !sub.connack.session_present,
        "the MQTT 5 session should have expired after 2 s"
    );
    let sub4 = V4Client::must_connect_with(persistent_v4(&broker, &id4)).await;
    assert!(
        !sub4.connack.session_present,
        "the 3.1.1 session should have expired after 2 s"
    );
}

/// A session's expiry timer ends that session, not a later one of the same client:
/// a session (expiry 2 s) is replaced at once by a clean-start one (expiry 5 s) with a
/// subscription; reconnecting after the first timer's 2 s but within the second's 5 s
/// finds the second session and its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expiry_timer_does_not_outlive_its_session() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use std::time::Instant;
    let broker = BrokerProcess::start_default();
    let id = unique_id("t03-timer");
    let topic = format!("t03/timer/{id}");

    let first = V5Client::must_connect_with(persistent_v5(&broker, &id, 2)).await;
    first.disconnect().await;
    let first_gone = Instant::now();

    let mut o = persistent_v5(&broker, &id, 5);
    o.set_clean_start(true);
    let mut second = V5Client::must_connect_with(o).await;
    assert!(
        !second.connack.session_present,
        "clean start must begin a new session"
    );
    second.must_subscribe(&topic, Q5::AtLeastOnce).await;
    // Control: a client with only a session like the second, ended at the same time.
    let control_id = unique_id("t03-timer-control");
    let mut control = V5Client::must_connect_with(persistent_v5(&broker, &control_id, 5)).await;
    control.must_subscribe(&topic, Q5::AtLeastOnce).await;
    control.disconnect().await;
    second.disconnect().await;
    let second_gone = Instant::now();
    assert!(
        second_gone.duration_since(first_gone) < Duration::from_secs(1),
        "the schedule needs the second session within 1 s of the first; it took {:?}",
        second_gone.duration_since(first_gone)
    );

    // Past the first session's 2 s (with 1.5 s to spare), well within the second's 5 s.
    tokio::time::sleep_until((first_gone + Duration::from_millis(3500)).into()).await;
    let control = V5Client::must_connect_with(persistent_v5(&broker, &control_id, 5)).await;
    assert!(
        control.connack.session_present,
        "control: a session with a 5 s expiry, away {:?}, should still be there",
        second_gone.elapsed()
    );
    control.disconnect().await;
    let mut third = V5Client::must_connect_with(persistent_v5(&broker, &id, 5)).await;
    let away = second_gone.elapsed();
    assert!(
        third.connack.session_present,
        "reconnected {away:?} after a session with a 5 s expiry ended, CONNACK says no \
         session: the expiry timer of the session before it (2 s, ended {:?} ago) ended it",
        first_gone.elapsed()
    );
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t03-timer-pub")).await;
    publisher
        .must_publish(&topic, Q5::AtLeastOnce, false, "still subscribed")
        .await;
    assert_eq!(
        text(&third.must_recv_publish(WAIT).await.payload),
        "still subscribed",
        "the second session's subscription should deliver"
    );
}
