"""Configured limits: maximum packet size both ways, bounded session queues."""

import time

import pytest

from fleetmq_testlib import QUIET, V311, V5


def test_v5_max_packet_size_advertised_and_enforced(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"max_packet_size": 1024}})
    c = client_factory(version=V5, on=b)
    assert getattr(c.connack_properties, "MaximumPacketSize", None) == 1024
    c.subscribe("big/t", qos=1)
    c.publish("big/t", b"x" * 500, qos=1)
    assert len(c.recv().payload) == 500
    c.paho.publish("big/t", b"x" * 2000, qos=1)
    d = c.wait_disconnected()
    assert d.reason_code == 0x95, f"disconnected with {d.reason_code:#04x}, expected 0x95"


def test_v311_oversize_packet_closes_connection(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"max_packet_size": 1024}})
    c = client_factory(version=V311, on=b)
    other = client_factory(version=V311, on=b)
    other.subscribe("big/#", qos=1)
    c.paho.publish("big/t", b"x" * 2000, qos=1)
    c.wait_disconnected()
    other.expect_nothing(what="(the oversize message must not be delivered)")
    # The server is fine and other clients are unaffected.
    client_factory(version=V311, on=b).publish("big/ok", b"small", qos=1)
    assert other.recv().payload == b"small"


def test_server_respects_client_maximum_packet_size(client_factory):
    small = client_factory(version=V5, MaximumPacketSize=256)
    small.subscribe("limit/#", qos=1)
    pub = client_factory(version=V5)
    pub.publish("limit/big", b"x" * 1000, qos=1)
    pub.publish("limit/small", b"y" * 10, qos=1)
    m = small.recv()
    assert (m.topic, m.payload) == ("limit/small", b"y" * 10), (
        "a message larger than the client's Maximum Packet Size must be dropped")
    small.expect_nothing()
    assert small.paho.is_connected()


@pytest.mark.parametrize("policy", ["drop-new", "drop-oldest"])
def test_offline_queue_is_bounded(broker_factory, client_factory, version, policy):
    b = broker_factory(config={"mqtt": {"max_queued_messages": 5,
                                        "queue_full_policy": policy}})
    props = {"SessionExpiryInterval": 300} if version == V5 else {}
    cid = f"bounded-{version}-{policy}"
    c = client_factory(version=version, on=b, client_id=cid, clean=False, **props)
    c.subscribe("bounded/t", qos=1)
    c.disconnect()
    # Publish only once the broker has the subscriber offline; otherwise the first
    # message may still go in flight to the closing connection (and be resent later).
    wait_for_metric(b, 'fleetmq_connections_closed_total{reason="client_disconnect"}', 1)
    pub = client_factory(version=version, on=b)
    for i in range(12):
        pub.publish("bounded/t", str(i).encode(), qos=1)
    back = client_factory(version=version, on=b, client_id=cid, clean=False, **props)
    got = [int(m.payload) for m in back.recv_n(5)] + [int(m.payload) for m in back.drain(QUIET)]
    want = list(range(5)) if policy == "drop-new" else list(range(7, 12))
    assert got == want, f"{policy}: got {got}"
    m = b.metrics()
    dropped = m.get('fleetmq_messages_dropped_total{reason="queue_full"}')
    assert dropped == 7, f"queue_full drops counted: {dropped}"
    assert m['fleetmq_limit_hits_total{limit="queued_messages"}'] == 7


def wait_for_metric(broker, name, at_least, timeout=10.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = broker.metrics().get(name)
        if value is not None and value >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} is {value}, expected >= {at_least} within {timeout}s")


def _closed(broker, reason: str) -> float:
    return broker.metrics().get(f'fleetmq_connections_closed_total{{reason="{reason}"}}', 0)


def test_connect_rate_per_listener_refuses_with_0x9f(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"max_connect_rate": 1}})
    # Every TCP connection counts, the start-up check's too (as a load balancer's
    # health checks would): let the bucket fill again.
    time.sleep(1.1)
    # One a second, with a burst of one: of several CONNECTs in a row, all but the
    # first are refused unless a whole second passes between two.
    codes = []
    for i in range(5):
        c = client_factory(version=V5, client_id=f"rate-{i}", on=b, connect=False)
        codes.append(c.connect(expect_rc=None).reason_code)
    refused = codes.count(0x9F)
    assert codes[0] == 0 and refused >= 3, f"CONNACK codes {codes}"
    assert set(codes) <= {0, 0x9F}
    m = b.metrics()
    assert m['fleetmq_limit_hits_total{limit="connect_rate"}'] == refused
    assert _closed(b, "connection_rate_exceeded") == refused
    # MQTT 3.1.1 has no such code: return code 3, server unavailable.
    time.sleep(1.1)
    client_factory(version=V311, client_id="rate-ok", on=b)
    old = client_factory(version=V311, client_id="rate-old", on=b, connect=False)
    # (paho reports return code 3 as 0x88, its MQTT 5 equivalent.)
    assert old.connect(expect_rc=None).reason_code == 0x88


def test_publish_rate_per_client_disconnects_with_0x96(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"max_publish_rate": 5}})
    calm = client_factory(version=V5, on=b)
    for _ in range(3):
        assert calm.publish("rate/calm", "x", qos=1) == 0
    fast = client_factory(version=V5, on=b)
    for i in range(20):
        fast.paho.publish("rate/fast", str(i), qos=0)
    d = fast.wait_disconnected()
    assert d.reason_code == 0x96, f"disconnected with {d.reason_code:#04x}"
    assert "PUBLISH a second" in getattr(d.properties, "ReasonString", "")
    wait_for_metric(b, 'fleetmq_limit_hits_total{limit="publish_rate"}', 1)
    assert _closed(b, "message_rate_too_high") == 1
    # Others are unaffected.
    assert calm.publish("rate/calm", "still", qos=1) == 0


def test_publish_bytes_rate_per_client_disconnects_with_0x97(broker_factory, client_factory):
    # A burst of one largest packet (2 KiB), then 1,000 bytes a second.
    b = broker_factory(config={"mqtt": {"max_publish_bytes_rate": 1000,
                                        "max_packet_size": 2048}})
    c = client_factory(version=V5, on=b)
    assert c.publish("bytes/t", b"x" * 1500, qos=1) == 0
    for _ in range(4):
        c.paho.publish("bytes/t", b"x" * 1000, qos=0)
    d = c.wait_disconnected()
    assert d.reason_code == 0x97, f"disconnected with {d.reason_code:#04x}"
    wait_for_metric(b, 'fleetmq_limit_hits_total{limit="publish_bytes_rate"}', 1)
    old = client_factory(version=V311, on=b)
    for _ in range(4):
        old.paho.publish("bytes/t", b"x" * 1000, qos=0)
    old.wait_disconnected()
    wait_for_metric(b, 'fleetmq_limit_hits_total{limit="publish_bytes_rate"}', 2)


def test_topic_levels_limit_refuses_with_0x8f_and_0x90_and_is_counted(broker_factory,
                                                                      client_factory):
    b = broker_factory(config={"mqtt": {"max_topic_levels": 3}})
    c = client_factory(version=V5, on=b)
    # SUBSCRIBE: the deep filter is refused in its SUBACK, the others granted.
    assert c.subscribe(["a/b/c", "a/b/c/d", "a/+/#"], qos=1, check=False) == [1, 0x8F, 1]
    assert c.publish("a/b/c", b"ok", qos=1) == 0
    assert c.recv().payload == b"ok"
    # PUBLISH: a topic over the limit ends the connection with 0x90.
    c.paho.publish("a/b/c/d", b"deep", qos=1)
    d = c.wait_disconnected()
    assert d.reason_code == 0x90, f"disconnected with {d.reason_code:#04x}"
    wait_for_metric(b, 'fleetmq_limit_hits_total{limit="topic_levels"}', 2)
    assert b.metrics()['fleetmq_limit_hits_total{limit="topic_levels"}'] == 2


def test_inflight_window_holds_deliveries_until_acknowledged_and_counts_the_waits(
        broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"max_inflight": 1}})
    sub = client_factory(version=V5, on=b, manual_ack=True)
    sub.subscribe("window/t", qos=1)
    pub = client_factory(version=V5, on=b)
    for i in range(3):
        assert pub.publish("window/t", str(i).encode(), qos=1) == 0
    first = sub.recv()
    assert first.payload == b"0"
    sub.expect_nothing(what="(the window holds one unacknowledged message)")
    m = b.metrics()
    assert m['fleetmq_limit_hits_total{limit="inflight"}'] == 2
    assert m["fleetmq_queued_messages_current"] == 2
    for want in (b"1", b"2"):
        sub.paho.ack(first.mid, 1)
        first = sub.recv()
        assert first.payload == want
    sub.paho.ack(first.mid, 1)
    sub.expect_nothing()


def test_connection_limit_refuses_with_0x97_and_is_counted(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"max_connections": 1}})
    # The start-up probe's TCP connection holds the slot from its accept until its
    # task sees the close: wait until it has been counted and has ended.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = b.metrics()
        if m.get("fleetmq_connections_total", 0) >= 1 and m.get("fleetmq_connections_current", 0) == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the start-up probe's connection never ended: {b.metrics()}")
    first = client_factory(version=V5, on=b)
    second = client_factory(version=V5, on=b, connect=False)
    assert second.connect(expect_rc=None).reason_code == 0x97
    wait_for_metric(b, 'fleetmq_limit_hits_total{limit="connections"}', 1)
    assert first.paho.is_connected()
