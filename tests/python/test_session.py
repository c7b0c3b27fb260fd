"""Persistent sessions: MQTT 3.1.1 clean_session=0, MQTT 5 clean_start=0 + session expiry."""

import time

import pytest

from fleetmq_testlib import QUIET, V311, V5

SESSION = {V5: {"SessionExpiryInterval": 300}, V311: {}}


def _persistent(client_factory, version, client_id, **extra):
    return client_factory(version=version, client_id=client_id, clean=False,
                          **SESSION[version], **extra)


def test_offline_qos1_qos2_messages_delivered_on_reconnect(client_factory, version):
    cid = f"persist-{version}"
    c = _persistent(client_factory, version, cid)
    assert c.connack.session_present is False
    c.subscribe("offline/#", qos=2)
    c.disconnect()

    pub = client_factory(version=version)
    pub.publish("offline/a", b"q1-one", qos=1)
    pub.publish("offline/b", b"q2-one", qos=2)
    pub.publish("offline/a", b"q1-two", qos=1)
    pub.publish("offline/b", b"q2-two", qos=2)

    back = _persistent(client_factory, version, cid)
    assert back.connack.session_present is True
    got = back.recv_n(4)
    # Order is kept per topic and QoS (MQTT 4.6); across them the server may interleave.
    assert [(m.payload, m.qos) for m in got if m.topic == "offline/a"] == [
        (b"q1-one", 1), (b"q1-two", 1)]
    assert [(m.payload, m.qos) for m in got if m.topic == "offline/b"] == [
        (b"q2-one", 2), (b"q2-two", 2)]
    back.expect_nothing(what="(queued messages are delivered once)")

    # The subscription itself survived: live messages flow too.
    pub.publish("offline/c", b"live", qos=1)
    assert back.recv().payload == b"live"


def test_session_present_false_after_clean_start(client_factory, version):
    cid = f"clean-{version}"
    c = _persistent(client_factory, version, cid)
    c.subscribe("clean/#", qos=1)
    c.disconnect()
    # Reconnect with a clean session: the old session and its subscriptions are gone.
    fresh = client_factory(version=version, client_id=cid, clean=True)
    assert fresh.connack.session_present is False
    client_factory(version=version).publish("clean/x", b"x", qos=1)
    fresh.expect_nothing(what="(the subscription of the discarded session)")
    fresh.disconnect()
    again = _persistent(client_factory, version, cid)
    assert again.connack.session_present is False


def test_clean_session_does_not_queue(client_factory, version):
    cid = f"transient-{version}"
    c = client_factory(version=version, client_id=cid, clean=True)
    c.subscribe("transient/#", qos=1)
    c.disconnect()
    client_factory(version=version).publish("transient/x", b"lost", qos=1)
    back = client_factory(version=version, client_id=cid, clean=True)
    assert back.connack.session_present is False
    back.expect_nothing()


def test_v5_session_expiry_zero_ends_session_at_disconnect(client_factory):
    c = client_factory(version=V5, client_id="expiry-zero", clean=False)
    c.subscribe("ez/#", qos=1)
    c.disconnect()
    client_factory(version=V5).publish("ez/x", b"x", qos=1)
    back = client_factory(version=V5, client_id="expiry-zero", clean=False)
    assert back.connack.session_present is False
    back.expect_nothing()


def test_v5_session_expires_after_interval(client_factory):
    c = client_factory(version=V5, client_id="expiry-short", clean=False,
                       SessionExpiryInterval=1)
    c.subscribe("es/#", qos=1)
    c.disconnect()
    time.sleep(3.5)
    back = client_factory(version=V5, client_id="expiry-short", clean=False,
                          SessionExpiryInterval=1)
    assert back.connack.session_present is False


def test_v5_session_expiry_set_at_disconnect(client_factory):
    """DISCONNECT may raise the session expiry interval from a non-zero value."""
    c = client_factory(version=V5, client_id="expiry-at-disconnect", clean=False,
                       SessionExpiryInterval=1)
    c.subscribe("ed/#", qos=1)
    c.disconnect(SessionExpiryInterval=300)
    time.sleep(2.5)
    client_factory(version=V5).publish("ed/x", b"kept", qos=1)
    back = client_factory(version=V5, client_id="expiry-at-disconnect", clean=False,
                          SessionExpiryInterval=300)
    assert back.connack.session_present is True
    assert back.recv().payload == b"kept"


@pytest.mark.parametrize("qos", [1, 2])
def test_messages_while_online_then_offline_then_online(client_factory, version, qos):
    cid = f"flap-{version}-{qos}"
    pub = client_factory(version=version)
    expected = []
    for round_ in range(3):
        c = _persistent(client_factory, version, cid)
        if round_ == 0:
            c.subscribe("flap/t", qos=qos)
        else:
            got = c.recv_n(5)
            assert [m.payload for m in got] == expected[-5:]
        for i in range(3):
            payload = f"online-{round_}-{i}".encode()
            pub.publish("flap/t", payload, qos=qos)
            assert c.recv().payload == payload
        c.disconnect()
        for i in range(5):
            payload = f"offline-{round_}-{i}".encode()
            pub.publish("flap/t", payload, qos=qos)
            expected.append(payload)
    last = _persistent(client_factory, version, cid)
    assert [m.payload for m in last.recv_n(5)] == expected[-5:]
    last.expect_nothing(within=QUIET)


def test_unacknowledged_qos1_redelivered_with_dup_on_reconnect(client_factory, version):
    cid = f"dup-{version}"
    c = client_factory(version=version, client_id=cid, clean=False, manual_ack=True,
                       **SESSION[version])
    c.subscribe("dup/t", qos=1)
    client_factory(version=version).publish("dup/t", b"ack me", qos=1)
    first = c.recv()
    assert (first.payload, first.dup) == (b"ack me", False)
    c.drop()  # never sent PUBACK

    back = _persistent(client_factory, version, cid)
    assert back.connack.session_present is True
    again = back.recv()
    assert again.payload == b"ack me"
    assert again.dup is True, "a resent PUBLISH must have DUP = 1"
    back.expect_nothing(what="(acknowledged now: no third copy)")
    back.disconnect()
    last = _persistent(client_factory, version, cid)
    last.expect_nothing(what="(the message was acknowledged on the previous connection)")
