"""Drain on SIGTERM, seen by paho-mqtt clients: `/readyz` turns 503 at once, the
listener stops accepting, MQTT 5 clients are told to use another server (DISCONNECT
0x9C with the configured Server Reference) at moments spread at `drain.rate`, MQTT
3.1.1 clients are closed, persistent sessions are kept, and the process exits 0."""

from __future__ import annotations

import signal
import socket
import time

from fleetmq_testlib import V5

V311 = 4
USE_ANOTHER_SERVER = 0x9C
REFERENCE = "mqtt-b.example.net:8883"


def _connect_refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_sends_mqtt5_clients_elsewhere_one_by_one_and_keeps_their_sessions(
        broker_factory, client_factory):
    broker = broker_factory(config={"drain": {"rate": 2, "spread": 10,
                                              "server_reference": REFERENCE}})
    v5 = [client_factory(version=V5, client_id=f"drain-v5-{i}", clean=False, on=broker,
                         SessionExpiryInterval=600)
          for i in range(4)]
    for c in v5:
        c.subscribe("drain/t", qos=1)
    old = client_factory(version=V311, client_id="drain-v311", on=broker)

    assert broker.http_get("/readyz")[0] == 200
    broker.proc.send_signal(signal.SIGTERM)
    # The signal is handled a moment later; the clients keep the node up for seconds.
    deadline = time.monotonic() + 5
    while (answer := broker.http_get("/readyz"))[0] == 200:
        assert time.monotonic() < deadline, "/readyz should turn 503 once draining"
        time.sleep(0.02)
    assert (answer[0], answer[1].strip()) == (503, "not ready: draining")
    deadline = time.monotonic() + 5
    while not _connect_refused(broker.host, broker.port):
        assert time.monotonic() < deadline, "the MQTT listener should stop accepting"
        time.sleep(0.05)

    # Five clients at two a second: all told within 2.5 s, not all at once.
    told = [c.wait_disconnected(timeout=10) for c in v5]
    for d in told:
        assert d.reason_code == USE_ANOTHER_SERVER
        assert getattr(d.properties, "ServerReference", None) == REFERENCE
    assert old.wait_disconnected(timeout=10) is not None
    moments = sorted(d.at for d in told)
    assert moments[-1] - moments[0] >= 0.5, f"all told within {moments[-1] - moments[0]:.3f} s"

    assert broker.proc.wait(timeout=20) == 0
    log = broker.log_tail()
    assert "drained and stopped" in log

    broker.start()
    again = client_factory(version=V5, client_id="drain-v5-0", clean=False, on=broker,
                           connect=False)
    assert again.connect(SessionExpiryInterval=600).session_present
