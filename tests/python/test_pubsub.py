"""PUBLISH / SUBSCRIBE at QoS 0, 1 and 2 with both protocol versions."""

import os

import pytest

from fleetmq_testlib import V311, V5

PAYLOADS = {
    "empty": b"",
    "text": "temperature=21.5 °C".encode(),
    "binary": bytes(range(256)) * 4,
    "nul-and-high-bytes": b"\x00\x00\xff\xfe\x80\x00",
    "64KiB-random": os.urandom(64 * 1024),
}


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_payload_integrity(client_factory, version, qos):
    sub = client_factory(version=version)
    pub = client_factory(version=version)
    sub.subscribe("pubsub/data", qos=qos)
    for name, payload in PAYLOADS.items():
        pub.publish("pubsub/data", payload, qos=qos)
        m = sub.recv()
        assert m.topic == "pubsub/data"
        assert m.payload == payload, f"payload {name!r} changed on the way"
        assert m.qos == qos
        assert m.retain is False


@pytest.mark.parametrize("pub_qos,sub_qos", [(2, 0), (2, 1), (1, 0), (0, 2), (1, 2)])
def test_delivered_qos_is_minimum_of_publish_and_subscription(client_factory, version,
                                                              pub_qos, sub_qos):
    sub = client_factory(version=version)
    pub = client_factory(version=version)
    sub.subscribe("pubsub/qos", qos=sub_qos)
    pub.publish("pubsub/qos", b"q", qos=pub_qos)
    m = sub.recv()
    assert m.qos == min(pub_qos, sub_qos)


def test_cross_version_delivery(client_factory):
    """A v5 publisher reaches a v3.1.1 subscriber and the other way round."""
    v3 = client_factory(version=V311)
    v5 = client_factory(version=V5)
    v3.subscribe("cross/to-v3", qos=2)
    v5.subscribe("cross/to-v5", qos=2)
    v5.publish("cross/to-v3", b"from five", qos=2, UserProperty=[("k", "v")])
    v3.publish("cross/to-v5", b"from three", qos=2)
    assert v3.recv().payload == b"from five"
    assert v5.recv().payload == b"from three"


@pytest.mark.parametrize("qos", [1, 2])
def test_messages_from_one_publisher_keep_their_order(client_factory, version, qos):
    sub = client_factory(version=version)
    pub = client_factory(version=version)
    sub.subscribe("pubsub/order", qos=qos)
    n = 100
    for i in range(n):
        pub.paho.publish("pubsub/order", str(i).encode(), qos=qos)
    got = sub.recv_n(n, timeout=30)
    assert [int(m.payload) for m in got] == list(range(n))
    sub.expect_nothing(what="after all 100 messages (a duplicate?)")


def test_qos0_publish_to_topic_without_subscribers_is_fine(client_factory, version):
    pub = client_factory(version=version)
    pub.publish("nobody/listens", b"void", qos=0)
    pub.publish("nobody/listens", b"void", qos=1)
    pub.publish("nobody/listens", b"void", qos=2)
    # The connection is still alive and usable.
    pub.subscribe("nobody/listens", qos=1)
    pub.publish("nobody/listens", b"now", qos=1)
    assert pub.recv().payload == b"now"


def test_v311_overlapping_subscriptions_deliver_one_copy_at_highest_qos(client_factory):
    sub = client_factory(version=V311)
    pub = client_factory(version=V311)
    sub.subscribe("overlap/#", qos=0)
    sub.subscribe("overlap/+", qos=2)
    pub.publish("overlap/x", b"once", qos=2)
    m = sub.recv()
    assert m.payload == b"once"
    assert m.qos == 2
    sub.expect_nothing(what="(a second copy for the overlapping subscription)")


def test_resubscribe_replaces_qos(client_factory, version):
    sub = client_factory(version=version)
    pub = client_factory(version=version)
    sub.subscribe("resub/t", qos=2)
    sub.subscribe("resub/t", qos=0)
    pub.publish("resub/t", b"x", qos=2)
    m = sub.recv()
    assert m.qos == 0
    sub.expect_nothing(what="(the replaced subscription must not deliver a second copy)")


def test_unsubscribed_filter_stops_delivery(client_factory, version):
    sub = client_factory(version=version)
    pub = client_factory(version=version)
    sub.subscribe("unsub/t", qos=1)
    pub.publish("unsub/t", b"before", qos=1)
    assert sub.recv().payload == b"before"
    sub.unsubscribe("unsub/t")
    pub.publish("unsub/t", b"after", qos=1)
    sub.expect_nothing(what="after UNSUBSCRIBE")
