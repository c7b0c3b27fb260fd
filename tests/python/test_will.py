"""Wills: sent on an abnormal close, not after a normal DISCONNECT; MQTT 5 will delay."""

import time

from fleetmq_testlib import QUIET, V5


def _watcher(client_factory, version, topic="will/#"):
    w = client_factory(version=version)
    w.subscribe(topic, qos=1)
    return w


def test_will_published_on_abnormal_close(client_factory, version):
    watcher = _watcher(client_factory, version)
    c = client_factory(version=version, connect=False)
    c.will("will/abnormal", b"gone", qos=1)
    c.connect()
    c.drop()
    m = watcher.recv()
    assert (m.topic, m.payload) == ("will/abnormal", b"gone")
    assert m.qos == 1
    watcher.expect_nothing(what="(a will is sent once)")


def test_no_will_after_normal_disconnect(client_factory, version):
    watcher = _watcher(client_factory, version)
    c = client_factory(version=version, connect=False)
    c.will("will/normal", b"should not be sent", qos=1)
    c.connect()
    c.disconnect()
    watcher.expect_nothing(within=2.0, what="after a normal DISCONNECT")


def test_retained_will_is_kept(client_factory, version):
    c = client_factory(version=version, connect=False)
    c.will("will/retained", b"offline", qos=1, retain=True)
    c.connect()
    c.drop()
    # Poll with fresh subscribers until the retained will shows up.
    deadline = time.monotonic() + 10
    while True:
        s = client_factory(version=version)
        s.subscribe("will/retained", qos=1)
        got = s.drain(0.5)
        if got:
            assert (got[0].payload, got[0].retain) == (b"offline", True)
            return
        assert time.monotonic() < deadline, "retained will never appeared"


def test_v5_will_after_disconnect_with_reason_0x04(client_factory):
    watcher = _watcher(client_factory, V5)
    c = client_factory(version=V5, connect=False)
    c.will("will/0x04", b"asked for", qos=1)
    c.connect()
    c.disconnect(reason_code=0x04)
    m = watcher.recv()
    assert (m.topic, m.payload) == ("will/0x04", b"asked for")


def test_v5_will_properties_passed_through(client_factory):
    watcher = _watcher(client_factory, V5)
    c = client_factory(version=V5, connect=False)
    c.will("will/props", b'{"state":"dead"}', qos=1, ContentType="application/json",
           UserProperty=[("device", "d1")], ResponseTopic="will/reply",
           CorrelationData=b"\x01\x02")
    c.connect()
    c.drop()
    m = watcher.recv()
    assert m.prop("ContentType") == "application/json"
    assert m.prop("UserProperty") == [("device", "d1")]
    assert m.prop("ResponseTopic") == "will/reply"
    assert m.prop("CorrelationData") == b"\x01\x02"


def test_v5_will_delay_publishes_after_delay(client_factory):
    watcher = _watcher(client_factory, V5)
    c = client_factory(version=V5, client_id="will-delay-1", clean=False, connect=False)
    c.will("will/delayed", b"late", qos=1, WillDelayInterval=3)
    c.connect(SessionExpiryInterval=60)
    dropped = time.monotonic()
    c.drop()
    # Nothing in the first second (the delay is 3 s) ...
    watcher.expect_nothing(within=1.0, what="before the will delay has passed")
    # ... then the will arrives.
    m = watcher.recv(timeout=10)
    assert (m.topic, m.payload) == ("will/delayed", b"late")
    assert m.at - dropped >= 2.0, "will published well before its delay of 3 s"


def test_v5_will_delay_cancelled_by_reconnect(client_factory):
    watcher = _watcher(client_factory, V5)
    c = client_factory(version=V5, client_id="will-delay-2", clean=False, connect=False)
    c.will("will/cancelled", b"never", qos=1, WillDelayInterval=4)
    c.connect(SessionExpiryInterval=60)
    c.drop()
    time.sleep(0.5)
    back = client_factory(version=V5, client_id="will-delay-2", clean=False,
                          SessionExpiryInterval=60)
    assert back.connack.session_present is True
    watcher.expect_nothing(within=4 + 2 * QUIET, what="(reconnect within the will delay)")


def test_v5_will_delay_bounded_by_session_expiry(client_factory):
    """The will is sent when the session ends, if that is before the will delay."""
    watcher = _watcher(client_factory, V5)
    c = client_factory(version=V5, client_id="will-delay-3", clean=False, connect=False)
    c.will("will/session-end", b"session over", qos=1, WillDelayInterval=3600)
    c.connect(SessionExpiryInterval=2)
    c.drop()
    m = watcher.recv(timeout=10)
    assert m.payload == b"session over"


def test_keepalive_timeout_closes_connection_and_sends_will(client_factory, version):
    watcher = _watcher(client_factory, version)
    c = client_factory(version=version, keepalive=2, connect=False)
    c.will("will/keepalive", b"silent", qos=1)
    c.connect()
    c.stop_loop()  # the socket stays open, but no PINGREQ is sent any more
    silent_since = time.monotonic()
    m = watcher.recv(timeout=15)
    assert m.payload == b"silent"
    # The server waits 1.5 x keep alive (3 s) of silence; coarse lower bound.
    assert m.at - silent_since >= 1.5, "connection closed well before 1.5 x keep alive"
