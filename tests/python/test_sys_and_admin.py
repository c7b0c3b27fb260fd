"""$SYS statistics topics and the admin HTTP endpoints of docs/testing-contract.md."""

import re
import time

from fleetmq_testlib import V311, V5

SYS_TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained/count",
]


def _collect_sys(client, topics, timeout=10.0):
    """Latest payload per $SYS topic, until every one of `topics` was seen."""
    seen: dict[str, bytes] = {}
    deadline = time.monotonic() + timeout
    while not set(topics) <= set(seen) and time.monotonic() < deadline:
        for m in client.drain(0.2):
            seen[m.topic] = m.payload
    return seen


def test_sys_topics_published(broker_factory, client_factory, version):
    b = broker_factory(config={"mqtt": {"sys_interval": 1}})
    c = client_factory(version=version, on=b)
    c.subscribe("$SYS/#", qos=0)
    seen = _collect_sys(c, SYS_TOPICS)
    missing = [t for t in SYS_TOPICS if t not in seen]
    assert not missing, f"$SYS topics never published: {missing}; seen: {sorted(seen)}"
    assert seen["$SYS/broker/version"].decode().strip(), "empty version"
    for t in SYS_TOPICS[1:]:
        text = seen[t].decode()
        assert re.fullmatch(r"\d+", text), f"{t}: {text!r} is not a decimal number"
    assert int(seen["$SYS/broker/clients/connected"]) >= 1
    assert int(seen["$SYS/broker/subscriptions/count"]) >= 1


def test_sys_topics_are_retained_and_updated(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"sys_interval": 1}})
    pub = client_factory(version=V5, on=b)
    pub.publish("sys/retained", b"r", qos=1, retain=True)
    time.sleep(2.5)  # at least one $SYS round after the retained message

    late = client_factory(version=V311, on=b)
    late.subscribe("$SYS/broker/#", qos=0)
    first = late.recv()  # retained: delivered at once on subscribe
    assert first.retain is True and first.topic.startswith("$SYS/broker/")
    seen = _collect_sys(late, ["$SYS/broker/retained/count", "$SYS/broker/uptime"])
    # The retained count includes our message (the $SYS messages may count too).
    assert int(seen["$SYS/broker/retained/count"]) >= 1

    # Uptime goes up between two rounds.
    up1 = int(seen["$SYS/broker/uptime"])
    deadline = time.monotonic() + 10
    up2 = up1
    while up2 <= up1 and time.monotonic() < deadline:
        for m in late.drain(0.3):
            if m.topic == "$SYS/broker/uptime":
                up2 = int(m.payload)
    assert up2 > up1, f"uptime stayed at {up1}"


def test_sys_messages_received_counter_grows(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"sys_interval": 1}})
    c = client_factory(version=V5, on=b)
    c.subscribe("$SYS/broker/messages/received", qos=0)
    before = int(c.recv().payload)
    for i in range(20):
        c.publish("count/me", str(i).encode(), qos=1)
    deadline = time.monotonic() + 10
    after = before
    while after < before + 20 and time.monotonic() < deadline:
        for m in c.drain(0.3):
            after = int(m.payload)
    assert after >= before + 20, f"messages/received went from {before} to {after}"


def test_no_sys_when_disabled(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"sys_interval": 0}})
    c = client_factory(version=V5, on=b)
    c.subscribe("$SYS/#", qos=0)
    c.expect_nothing(within=2.5, what="with sys_interval = 0")


def test_healthz(broker):
    status, body = broker.http_get("/healthz")
    assert status == 200
    assert body.strip() == "ok"


def test_metrics_names_and_counts(broker, client_factory):
    sub = client_factory(version=V5)
    sub.subscribe("metrics/t", qos=1)
    pub = client_factory(version=V311)
    pub.publish("metrics/t", b"x", qos=1, retain=True)
    sub.recv()
    m = broker.metrics()
    names = {k.split("{", 1)[0] for k in m}
    for name in ["fleetmq_connections_current", "fleetmq_connections_total",
                 "fleetmq_decode_errors_total", "fleetmq_messages_received_total",
                 "fleetmq_messages_sent_total", "fleetmq_bytes_received_total",
                 "fleetmq_bytes_sent_total", "fleetmq_sessions_current",
                 "fleetmq_subscriptions_current", "fleetmq_retained_messages_current"]:
        assert name in names, f"metric {name} missing from /metrics"
    assert m["fleetmq_connections_current"] >= 2
    assert m["fleetmq_connections_total"] >= 2
    assert m["fleetmq_messages_received_total"] >= 1
    assert m["fleetmq_messages_sent_total"] >= 1
    assert m["fleetmq_subscriptions_current"] >= 1
    assert m["fleetmq_retained_messages_current"] >= 1
