"""Retained messages: set, replace, clear; retain handling and retain-as-published (MQTT 5)."""

from fleetmq_testlib import V311, V5


def test_retained_set_replace_clear(client_factory, version):
    pub = client_factory(version=version)

    pub.publish("retain/t", b"first", qos=1, retain=True)
    s1 = client_factory(version=version)
    s1.subscribe("retain/t", qos=1)
    m = s1.recv()
    assert (m.topic, m.payload, m.retain) == ("retain/t", b"first", True)
    s1.expect_nothing()

    # Replace.
    pub.publish("retain/t", b"second", qos=1, retain=True)
    # s1 is an established subscription: it gets the new message live, retain flag 0
    # (MQTT 3.1.1 [MQTT-3.3.1-9]; MQTT 5 without retain-as-published).
    live = s1.recv()
    assert (live.payload, live.retain) == (b"second", False)
    s2 = client_factory(version=version)
    s2.subscribe("retain/#", qos=1)
    got = s2.recv()
    assert (got.topic, got.payload, got.retain) == ("retain/t", b"second", True)
    s2.expect_nothing(what="(only the latest retained message is kept)")

    # Clear with an empty retained payload.
    pub.publish("retain/t", b"", qos=1, retain=True)
    s3 = client_factory(version=version)
    s3.subscribe("retain/#", qos=1)
    s3.expect_nothing(what="after the retained message was cleared")


def test_retained_delivered_for_wildcard_subscription_at_subscription_qos(client_factory,
                                                                          version):
    pub = client_factory(version=version)
    pub.publish("rw/a", b"a", qos=2, retain=True)
    pub.publish("rw/b/c", b"bc", qos=1, retain=True)
    pub.publish("rw/d", b"plain", qos=1, retain=False)
    sub = client_factory(version=version)
    sub.subscribe("rw/#", qos=1)
    got = {m.topic: m for m in sub.recv_n(2)}
    sub.expect_nothing(what="(a non-retained message was kept)")
    assert set(got) == {"rw/a", "rw/b/c"}
    assert got["rw/a"].payload == b"a" and got["rw/a"].qos == 1 and got["rw/a"].retain
    assert got["rw/b/c"].payload == b"bc" and got["rw/b/c"].qos == 1


def test_retained_qos0_message_is_kept(client_factory, version):
    pub = client_factory(version=version)
    pub.publish("rq0/t", b"zero", qos=0, retain=True)
    # A QoS 1 round trip on the same connection orders the QoS 0 publish before it.
    pub.publish("rq0/sync", b"", qos=1)
    sub = client_factory(version=version)
    sub.subscribe("rq0/t", qos=2)
    m = sub.recv()
    assert (m.payload, m.qos, m.retain) == (b"zero", 0, True)


def test_retain_handling_0_1_2(client_factory):
    pub = client_factory(version=V5)
    pub.publish("rh/t", b"kept", qos=1, retain=True)

    s = client_factory(version=V5)
    # Retain handling 1: send retained messages only if the subscription is new.
    s.subscribe("rh/t", qos=1, retain_handling=1)
    m = s.recv()
    assert (m.payload, m.retain) == (b"kept", True)
    s.subscribe("rh/t", qos=1, retain_handling=1)
    s.expect_nothing(what="re-subscribing with retain handling 1 (subscription existed)")

    # Retain handling 0: send on every subscribe, new or not.
    s.subscribe("rh/t", qos=1, retain_handling=0)
    m = s.recv()
    assert (m.payload, m.retain) == (b"kept", True)
    s.subscribe("rh/t", qos=1, retain_handling=0)
    assert s.recv().payload == b"kept"

    # Retain handling 2: never send retained messages on subscribe.
    s2 = client_factory(version=V5)
    s2.subscribe("rh/#", qos=1, retain_handling=2)
    s2.expect_nothing(what="with retain handling 2")
    # ... but the subscription does deliver live messages.
    pub.publish("rh/t", b"live", qos=1, retain=True)
    assert s2.recv().payload == b"live"


def test_retain_as_published(client_factory):
    rap = client_factory(version=V5)
    rap.subscribe("rap/t", qos=1, retain_as_published=True)
    plain = client_factory(version=V5)
    plain.subscribe("rap/t", qos=1)
    v3 = client_factory(version=V311)
    v3.subscribe("rap/t", qos=1)

    pub = client_factory(version=V5)
    pub.publish("rap/t", b"retained-live", qos=1, retain=True)
    assert rap.recv().retain is True, "retain-as-published must keep the RETAIN flag"
    assert plain.recv().retain is False
    assert v3.recv().retain is False

    pub.publish("rap/t", b"not-retained", qos=1, retain=False)
    assert rap.recv().retain is False
    assert plain.recv().retain is False
    assert v3.recv().retain is False


def test_retained_message_keeps_v5_properties(client_factory):
    pub = client_factory(version=V5)
    pub.publish("rprops/t", b"{}", qos=1, retain=True, ContentType="application/json",
                UserProperty=[("origin", "sensor-7")])
    sub = client_factory(version=V5)
    sub.subscribe("rprops/t", qos=1)
    m = sub.recv()
    assert m.retain
    assert m.prop("ContentType") == "application/json"
    assert m.prop("UserProperty") == [("origin", "sensor-7")]
