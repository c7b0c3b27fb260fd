"""MQTT 5 features: properties passed through, message expiry, subscription identifiers,
no local, shared subscriptions, topic aliases, reason codes."""

import time
from collections import Counter

import pytest

from fleetmq_testlib import QUIET, V311, V5, publish_props


def test_publish_properties_passed_through_unchanged(client_factory):
    sub = client_factory(version=V5)
    sub.subscribe("props/t", qos=1)
    pub = client_factory(version=V5)
    user = [("a", "1"), ("b", "two"), ("a", "again"), ("ünï", "cödé")]
    pub.publish("props/t", "héllo".encode(), qos=1,
                UserProperty=user,
                ContentType="text/plain; charset=utf-8",
                PayloadFormatIndicator=1,
                ResponseTopic="props/reply/42",
                CorrelationData=b"\x00\x01corr\xff")
    m = sub.recv()
    assert m.payload == "héllo".encode()
    # User properties: all of them, in order, duplicates kept [MQTT-3.3.2-18].
    assert m.prop("UserProperty") == user
    assert m.prop("ContentType") == "text/plain; charset=utf-8"
    assert m.prop("PayloadFormatIndicator") == 1
    assert m.prop("ResponseTopic") == "props/reply/42"
    assert m.prop("CorrelationData") == b"\x00\x01corr\xff"
    # No subscription identifier was asked for, so none is sent.
    assert m.prop("SubscriptionIdentifier") is None


def test_properties_at_qos2_and_to_several_subscribers(client_factory):
    subs = [client_factory(version=V5) for _ in range(3)]
    for i, s in enumerate(subs):
        s.subscribe("props2/#" if i % 2 else "props2/t", qos=2)
    pub = client_factory(version=V5)
    pub.publish("props2/t", b"x", qos=2, UserProperty=[("k", "v")], ResponseTopic="r")
    for s in subs:
        m = s.recv()
        assert m.qos == 2
        assert m.prop("UserProperty") == [("k", "v")]
        assert m.prop("ResponseTopic") == "r"


def test_request_response_pattern(client_factory):
    responder = client_factory(version=V5)
    responder.subscribe("rpc/request", qos=1)
    requester = client_factory(version=V5)
    requester.subscribe("rpc/response/me", qos=1)
    requester.publish("rpc/request", b"ping", qos=1, ResponseTopic="rpc/response/me",
                      CorrelationData=b"req-7")
    req = responder.recv()
    responder.publish(req.prop("ResponseTopic"), b"pong", qos=1,
                      CorrelationData=req.prop("CorrelationData"))
    resp = requester.recv()
    assert (resp.payload, resp.prop("CorrelationData")) == (b"pong", b"req-7")


def test_message_expiry_forwarded_to_online_subscriber(client_factory):
    sub = client_factory(version=V5)
    sub.subscribe("exp/live", qos=1)
    pub = client_factory(version=V5)
    pub.publish("exp/live", b"x", qos=1, MessageExpiryInterval=60)
    m = sub.recv()
    expiry = m.prop("MessageExpiryInterval")
    assert expiry is not None, "Message Expiry Interval must be forwarded"
    assert 50 <= expiry <= 60


def test_message_expiry_interval_decreases_while_queued(client_factory):
    c = client_factory(version=V5, client_id="exp-queued", clean=False,
                       SessionExpiryInterval=300)
    c.subscribe("exp/q", qos=1)
    c.disconnect()
    pub = client_factory(version=V5)
    pub.publish("exp/q", b"waits", qos=1, MessageExpiryInterval=60)
    time.sleep(3)
    back = client_factory(version=V5, client_id="exp-queued", clean=False,
                          SessionExpiryInterval=300)
    m = back.recv()
    assert m.payload == b"waits"
    expiry = m.prop("MessageExpiryInterval")
    assert expiry is not None, "Message Expiry Interval must be forwarded"
    assert 1 <= expiry <= 58, f"queued for 3 s, expiry 60: got {expiry}, expected <= 58"


def test_expired_message_is_not_delivered(client_factory):
    c = client_factory(version=V5, client_id="exp-dropped", clean=False,
                       SessionExpiryInterval=300)
    c.subscribe("exp/d", qos=1)
    c.disconnect()
    pub = client_factory(version=V5)
    pub.publish("exp/d", b"expires", qos=1, MessageExpiryInterval=1)
    pub.publish("exp/d", b"stays", qos=1)
    time.sleep(3)
    back = client_factory(version=V5, client_id="exp-dropped", clean=False,
                          SessionExpiryInterval=300)
    assert back.recv().payload == b"stays"
    back.expect_nothing(what="(the expired message)")


def test_expired_retained_message_is_not_delivered(client_factory):
    pub = client_factory(version=V5)
    pub.publish("exp/retained", b"short-lived", qos=1, retain=True, MessageExpiryInterval=1)
    time.sleep(3)
    sub = client_factory(version=V5)
    sub.subscribe("exp/retained", qos=1)
    sub.expect_nothing(what="(the retained message expired)")


def test_subscription_identifier(client_factory):
    sub = client_factory(version=V5)
    sub.subscribe("sid/t", qos=1, subscription_id=42)
    pub = client_factory(version=V5)
    pub.publish("sid/t", b"x", qos=1)
    assert sub.recv().prop("SubscriptionIdentifier") == [42]


def test_subscription_identifiers_of_overlapping_subscriptions(client_factory):
    sub = client_factory(version=V5)
    sub.subscribe("sid2/+", qos=1, subscription_id=7)
    sub.subscribe("sid2/#", qos=1, subscription_id=900000)
    sub.subscribe("sid2/x", qos=1)  # no identifier
    pub = client_factory(version=V5)
    pub.publish("sid2/x", b"x", qos=1)
    got = [sub.recv()] + sub.drain(QUIET)
    # One copy carrying every identifier, or one copy per subscription: either way, the
    # identifiers seen are exactly those of the matching subscriptions.
    ids = Counter(i for m in got for i in (m.prop("SubscriptionIdentifier") or []))
    assert ids == Counter({7: 1, 900000: 1}), f"identifiers seen: {dict(ids)}"
    assert all(m.payload == b"x" for m in got)


def test_subscription_identifier_on_retained_delivery(client_factory):
    pub = client_factory(version=V5)
    pub.publish("sid3/t", b"r", qos=1, retain=True)
    sub = client_factory(version=V5)
    sub.subscribe("sid3/#", qos=1, subscription_id=5)
    m = sub.recv()
    assert m.retain and m.prop("SubscriptionIdentifier") == [5]


def test_no_local(client_factory):
    me = client_factory(version=V5)
    me.subscribe("nolocal/t", qos=1, no_local=True)
    other = client_factory(version=V5)
    other.subscribe("nolocal/t", qos=1)
    me.publish("nolocal/t", b"mine", qos=1)
    assert other.recv().payload == b"mine"
    me.expect_nothing(what="(no local: own message)")
    other.publish("nolocal/t", b"theirs", qos=1)
    assert me.recv().payload == b"theirs"


def test_without_no_local_own_messages_come_back(client_factory):
    me = client_factory(version=V5)
    me.subscribe("local/t", qos=1)
    me.publish("local/t", b"echo", qos=1)
    assert me.recv().payload == b"echo"


def test_shared_subscription_spreads_messages_once_each(client_factory):
    members = [client_factory(version=V5) for _ in range(2)]
    for m in members:
        m.subscribe("$share/workers/jobs/+", qos=1)
    watcher = client_factory(version=V5)
    watcher.subscribe("jobs/#", qos=1)
    pub = client_factory(version=V5)
    n = 40
    for i in range(n):
        pub.publish(f"jobs/{i % 3}", f"job-{i}".encode(), qos=1)

    # The ordinary subscriber gets every message.
    assert sorted(m.payload for m in watcher.recv_n(n)) == sorted(
        f"job-{i}".encode() for i in range(n))

    deadline = time.monotonic() + 10
    per_member: list[list[bytes]] = [[] for _ in members]
    while sum(map(len, per_member)) < n and time.monotonic() < deadline:
        for idx, m in enumerate(members):
            per_member[idx] += [x.payload for x in m.drain(0.1)]
    for idx, m in enumerate(members):
        per_member[idx] += [x.payload for x in m.drain(QUIET)]
    everything = [p for lst in per_member for p in lst]
    counts = Counter(everything)
    assert sorted(counts) == sorted(f"job-{i}".encode() for i in range(n)), (
        f"missing: {n - len(counts)} of {n}")
    assert max(counts.values()) == 1, (
        f"delivered twice in the group: {[p for p, c in counts.items() if c > 1]}")
    assert all(per_member), f"one member got nothing: {[len(x) for x in per_member]}"


def test_shared_subscription_v311_member(client_factory):
    members = [client_factory(version=V311), client_factory(version=V5)]
    for m in members:
        m.subscribe("$share/mixed/work", qos=1)
    pub = client_factory(version=V5)
    for i in range(20):
        pub.publish("work", str(i).encode(), qos=1)
    got = members[0].drain(2.0) + members[1].drain(QUIET)
    assert sorted(int(m.payload) for m in got) == list(range(20))


def test_topic_alias_from_client(client_factory):
    sub = client_factory(version=V5)
    sub.subscribe("alias/#", qos=1)
    pub = client_factory(version=V5)
    pub.publish("alias/long/topic/name", b"first", qos=1, TopicAlias=1)
    pub.publish("", b"second", qos=1, TopicAlias=1)
    pub.publish("alias/other", b"third", qos=1, TopicAlias=1)  # remap alias 1
    pub.publish("", b"fourth", qos=1, TopicAlias=1)
    got = sub.recv_n(4)
    assert [(m.topic, m.payload) for m in got] == [
        ("alias/long/topic/name", b"first"), ("alias/long/topic/name", b"second"),
        ("alias/other", b"third"), ("alias/other", b"fourth")]
    # The subscriber did not allow aliases (no Topic Alias Maximum): none may be sent.
    assert all(m.prop("TopicAlias") is None for m in got)


def test_topic_alias_above_maximum_disconnects_0x94(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"topic_alias_maximum": 2}})
    pub = client_factory(version=V5, on=b)
    assert getattr(pub.connack_properties, "TopicAliasMaximum", None) == 2
    pub.paho.publish("alias/t", b"x", qos=0, properties=publish_props(TopicAlias=3))
    d = pub.wait_disconnected()
    assert d.reason_code == 0x94, f"disconnected with {d.reason_code:#04x}"


def test_unknown_topic_alias_disconnects(client_factory):
    pub = client_factory(version=V5)
    pub.paho.publish("", b"x", qos=0, properties=publish_props(TopicAlias=5))
    d = pub.wait_disconnected()
    # An alias that was never set: Protocol Error (0x82) per MQTT 5 3.3.4.
    assert d.reason_code in (0x82, 0x94), f"disconnected with {d.reason_code:#04x}"


def test_unsubscribe_reason_codes(client_factory):
    c = client_factory(version=V5)
    c.subscribe(["unsub/a", "unsub/b/#"], qos=1)
    codes = c.unsubscribe(["unsub/a", "unsub/none", "unsub/b/#"])
    assert codes == [0x00, 0x11, 0x00]
    # Unsubscribing again: nothing exists any more.
    assert c.unsubscribe("unsub/a") == [0x11]


def test_v311_unsuback(client_factory):
    c = client_factory(version=V311)
    c.subscribe("unsub3/a", qos=1)
    assert c.unsubscribe(["unsub3/a", "unsub3/none"]) == []  # v3.1.1 UNSUBACK has no codes
    client_factory(version=V311).publish("unsub3/a", b"x", qos=1)
    c.expect_nothing()


def test_puback_reason_no_matching_subscribers(client_factory):
    pub = client_factory(version=V5)
    # 0x10 (No matching subscribers) or 0x00 are both allowed: never an error.
    assert pub.publish("nobody/home", b"x", qos=1) in (0x00, 0x10)
    assert pub.publish("nobody/home", b"x", qos=2) in (0x00, 0x10)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_subscribe_reason_codes_are_granted_qos(client_factory, qos):
    c = client_factory(version=V5)
    assert c.subscribe("grant/t", qos=qos) == [qos]
