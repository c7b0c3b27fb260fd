//! Retained messages: set, replace, clear with an empty payload; delivery on
//! subscribe (with wildcards, at the lower QoS); MQTT 5 retain handling 0/1/2 and
//! retain-as-published.

use fleetmq_tests::{names, text, unique_id, BrokerProcess, V4Client, V5Client, QUIET, WAIT};
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_retained_set_replace_and_clear() {
    let broker = BrokerProcess::start_default();
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t04-pub")).await;

    // Set.
    publisher
        .must_publish("t04/a", QoS::AtLeastOnce, true, "r1")
        .await;
    let mut s = V4Client::must_connect(&broker, &unique_id("t04-s1")).await;
    s.must_subscribe("t04/a", QoS::AtLeastOnce).await;
    let p = s.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "r1");
    assert!(
        p.retain,
        "a retained message sent on subscribe has RETAIN set"
    );
    s.must_not_recv_publish(QUIET).await;

    // A live retained publish to an existing subscriber: RETAIN 0 in 3.1.1.
    publisher
        .must_publish("t04/a", QoS::AtLeastOnce, true, "r2")
        .await;
    let live = s.must_recv_publish(WAIT).await;
    assert_eq!(text(&live.payload), "r2");
    assert!(
        !live.retain,
        "3.1.1: RETAIN must be 0 on a message sent because of an established subscription"
    );

    // Replaced: a new subscriber gets only the newest.
    let mut s2 = V4Client::must_connect(&broker, &unique_id("t04-s2")).await;
    s2.must_subscribe("t04/a", QoS::AtLeastOnce).await;
    let got: Vec<String> = s2
        .drain_publishes(QUIET)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(got, vec!["r2"]);

    // Cleared with an empty payload.
    publisher
        .must_publish("t04/a", QoS::AtLeastOnce, true, "")
        .await;
    let mut s3 = V4Client::must_connect(&broker, &unique_id("t04-s3")).await;
    s3.must_subscribe("t04/a", QoS::AtLeastOnce).await;
    s3.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_match_wildcards_and_use_the_lower_qos() {
    let broker = BrokerProcess::start_default();
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t04-pub")).await;
    publisher
        .must_publish("t04/w/1", QoS::ExactlyOnce, true, "one")
        .await;
    publisher
        .must_publish("t04/w/2", QoS::AtMostOnce, true, "two")
        .await;
    publisher
        .must_publish("t04/w/2/deep", QoS::AtLeastOnce, true, "deep")
        .await;
    publisher
        .must_publish("t04/other", QoS::AtLeastOnce, true, "other")
        .await;

    let mut s = V4Client::must_connect(&broker, &unique_id("t04-w")).await;
    s.must_subscribe("t04/w/+", QoS::AtLeastOnce).await;
    let mut got: Vec<(String, QoS)> = s
        .drain_publishes(QUIET)
        .await
        .iter()
        .map(|p| (text(&p.payload), p.qos))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("one".to_string(), QoS::AtLeastOnce), // QoS 2 retained, QoS 1 subscription
            ("two".to_string(), QoS::AtMostOnce),  // QoS 0 retained
        ]
    );

    let mut all = V4Client::must_connect(&broker, &unique_id("t04-all")).await;
    all.must_subscribe("t04/#", QoS::AtLeastOnce).await;
    assert_eq!(all.drain_publishes(QUIET).await.len(), 4);
    broker.must_metric_at_least(names::RETAINED_CURRENT, &[], 4.0, WAIT);
}

async fn retained_on(broker: &BrokerProcess, topic: &str, payload: &str) {
    let mut publisher = V5Client::must_connect(broker, &unique_id("t04-pub5")).await;
    publisher
        .must_publish(topic, Q5::AtLeastOnce, true, payload.to_string())
        .await;
    publisher.disconnect().await;
}

fn filter(path: &str, rule: RetainForwardRule, rap: bool) -> Filter {
    let mut f = Filter::new(path, Q5::AtLeastOnce);
    f.retain_forward_rule = rule;
    f.preserve_retain = rap;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_0_sends_on_every_subscribe() {
    let broker = BrokerProcess::start_default();
    retained_on(&broker, "t04/rh0", "kept").await;
    let mut s = V5Client::must_connect(&broker, &unique_id("t04-rh0")).await;
    s.must_subscribe_filter(
        filter("t04/rh0", RetainForwardRule::OnEverySubscribe, false),
        None,
    )
    .await;
    let p = s.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "kept");
    assert!(p.retain);
    // Subscribing again to the same filter sends it again.
    s.must_subscribe_filter(
        filter("t04/rh0", RetainForwardRule::OnEverySubscribe, false),
        None,
    )
    .await;
    assert_eq!(text(&s.must_recv_publish(WAIT).await.payload), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_1_sends_only_for_a_new_subscription() {
    let broker = BrokerProcess::start_default();
    retained_on(&broker, "t04/rh1", "kept").await;
    let mut s = V5Client::must_connect(&broker, &unique_id("t04-rh1")).await;
    s.must_subscribe_filter(
        filter("t04/rh1", RetainForwardRule::OnNewSubscribe, false),
        None,
    )
    .await;
    assert_eq!(text(&s.must_recv_publish(WAIT).await.payload), "kept");
    s.must_subscribe_filter(
        filter("t04/rh1", RetainForwardRule::OnNewSubscribe, false),
        None,
    )
    .await;
    s.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_2_never_sends_retained_messages() {
    let broker = BrokerProcess::start_default();
    retained_on(&broker, "t04/rh2", "kept").await;
    let mut s = V5Client::must_connect(&broker, &unique_id("t04-rh2")).await;
    s.must_subscribe_filter(filter("t04/rh2", RetainForwardRule::Never, false), None)
        .await;
    s.must_not_recv_publish(QUIET).await;
    // Live messages still flow.
    retained_on(&broker, "t04/rh2", "live").await;
    assert_eq!(text(&s.must_recv_publish(WAIT).await.payload), "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_as_published() {
    let broker = BrokerProcess::start_default();
    let mut keep = V5Client::must_connect(&broker, &unique_id("t04-rap1")).await;
    keep.must_subscribe_filter(
        filter("t04/rap", RetainForwardRule::OnEverySubscribe, true),
        None,
    )
    .await;
    let mut clear = V5Client::must_connect(&broker, &unique_id("t04-rap0")).await;
    clear
        .must_subscribe_filter(
            filter("t04/rap", RetainForwardRule::OnEverySubscribe, false),
            None,
        )
        .await;

    retained_on(&broker, "t04/rap", "live retained").await;
    let p = keep.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "live retained");
    assert!(
        p.retain,
        "retain-as-published keeps the publisher's RETAIN flag"
    );
    let p = clear.must_recv_publish(WAIT).await;
    assert!(
        !p.retain,
        "without retain-as-published RETAIN is cleared on live delivery"
    );

    // A non-retained publish never gets RETAIN.
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t04-pub5")).await;
    publisher
        .must_publish("t04/rap", Q5::AtLeastOnce, false, "plain")
        .await;
    assert!(!keep.must_recv_publish(WAIT).await.retain);
    assert!(!clear.must_recv_publish(WAIT).await.retain);

    // On subscribe, a retained message always has RETAIN set.
    let mut late = V5Client::must_connect(&broker, &unique_id("t04-late")).await;
    late.must_subscribe_filter(
        filter("t04/rap", RetainForwardRule::OnEverySubscribe, false),
        None,
    )
    .await;
    let p = late.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "live retained");
    assert!(p.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_retained_publish_is_still_delivered_to_current_subscribers() {
    // Clearing a retained message is itself a message for those subscribed now.
    let broker = BrokerProcess::start_default();
    let mut s = V4Client::must_connect(&broker, &unique_id("t04-empty")).await;
    s.must_subscribe("t04/empty", QoS::AtLeastOnce).await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t04-pub")).await;
    publisher
        .must_publish("t04/empty", QoS::AtLeastOnce, true, "x")
        .await;
    publisher
        .must_publish("t04/empty", QoS::AtLeastOnce, true, "")
        .await;
    assert_eq!(text(&s.must_recv_publish(WAIT).await.payload), "x");
    let cleared = s.must_recv_publish(WAIT).await;
    assert!(cleared.payload.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_unavailable_is_advertised_and_enforced() {
    use fleetmq_codec::{Packet, ProtocolVersion, QoS as CQoS};
    use fleetmq_tests::raw::{connect_packet, publish_packet};
    use fleetmq_tests::RawClient;

    let broker = BrokerProcess::start_with_mqtt_config("retain_available = false");
    let (mut c, ack) = RawClient::must_connect_with(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V5, &unique_id("t04-noret"), true, 60),
    )
    .await;
    assert_eq!(
        ack.properties.retain_available,
        Some(false),
        "CONNACK {ack:?}"
    );
    // Non-retained traffic works.
    c.must_publish(publish_packet(
        "t04/noret",
        CQoS::AtLeastOnce,
        Some(1),
        b"plain",
    ))
    .await;
    // A retained PUBLISH: DISCONNECT 0x9A (Retain not supported).
    let mut p = publish_packet("t04/noret", CQoS::AtLeastOnce, Some(2), b"retained");
    p.retain = true;
    c.must_send(Packet::Publish(p)).await;
    c.must_be_disconnected_with(0x9A, WAIT).await;
    // Nothing was retained.
    let mut s = V4Client::must_connect(&broker, &unique_id("t04-noret-s")).await;
    s.must_subscribe("t04/noret", QoS::AtLeastOnce).await;
    s.must_not_recv_publish(QUIET).await;
}
