"""A node whose data directory fills up says so instead of leaving its clients in
silence, and loses nothing it acknowledged (issue 16, defect 6).

The data directory sits on a 24 MB tmpfs mounted by the test (root, as in CI); 4 KB
QoS 1 messages for a persistent subscriber that is away fill it. The publisher must get
an answer to every PUBLISH: PUBACK, PUBACK with an error reason (MQTT 5), or its
connection closed (MQTT 3.1.1 has no way to refuse). Then the node fails /healthz and
/readyz with the reason, shows it in a metric and its log, tells its clients to move
and stops accepting new ones; restarted with room in its data directory, it delivers
every message it acknowledged."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from fleetmq_testlib import WAIT, Broker, Client, V311, V5, broker_binary, port_open

PAYLOAD = b"x" * 4096
# Far more than 24 MB holds: the loop ends at the first refusal long before.
MAX_PUBLISHES = 20_000


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a 24 MB tmpfs for the data directory (root needed): "
                    f"{done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def publish_until_refused(pub: Client) -> tuple[int, str]:
    """Publishes until the node refuses; returns how many were acknowledged and how the
    refusal came (a reason code, or 'closed'). Every PUBLISH gets an answer in time."""
    for acked in range(MAX_PUBLISHES):
        info = pub.paho.publish("fill/x", PAYLOAD, qos=1)
        info.wait_for_publish(timeout=WAIT)
        if info.is_published():
            with pub._ack_cv:
                rc = pub.publish_results.pop(info.mid, 0)
            if rc >= 0x80:
                return acked, f"0x{rc:02X}"
            continue
        gone = pub.wait_disconnected(timeout=WAIT)
        assert gone is not None, f"PUBLISH {acked} got no answer within {WAIT}s"
        return acked, "closed"
    pytest.fail(f"{MAX_PUBLISHES} messages of 4 KB fit on a 24 MB disk?")


@pytest.mark.parametrize("version", [V5, V311], ids=["v5", "v311"])
def test_a_full_disk_is_told_to_clients_and_loses_nothing_acknowledged(
        request, tmp_path, small_disk, version):
    broker = Broker(broker_binary(), tmp_path / "node", name="full-disk")
    broker.data_dir = small_disk / "data"
    broker.data_dir.mkdir()
    request.node._fleetmq_brokers = [broker]
    broker.start()
    try:
        away = Client(broker, V5, client_id="away", clean=False)
        away.connect(SessionExpiryInterval=3600)
        away.subscribe("fill/#", qos=1)
        away.disconnect()
        away.close()

        pub = Client(broker, version, client_id=f"filler-{version}")
        pub.connect()
        acked, refusal = publish_until_refused(pub)
        expected = {"0x97", "0x80"} if version == V5 else {"closed"}
        assert refusal in expected, f"after {acked} acknowledged: {refusal}"
        assert acked > 100, "the disk held more than that"

        status, body = broker.http_get("/healthz")
        assert status == 503 and "storage failed" in body, (status, body)
        status, body = broker.http_get("/readyz")
        assert status == 503 and "storage failed" in body, (status, body)
        metrics = broker.metrics()
        assert metrics["fleetmq_storage_failed"] == 1
        assert metrics["fleetmq_storage_refused_acks_total"] >= 1
        assert "storage failed" in broker.log_tail()

        if version == V5:
            told = pub.wait_disconnected(timeout=WAIT)
            assert told is not None and told.reason_code in (0x9C, 0x8B), told
        # New clients are sent elsewhere: the node accepts no connection.
        deadline = time.monotonic() + WAIT
        while port_open(broker.host, broker.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not port_open(broker.host, broker.port), "still accepting clients"
        pub.close()
    finally:
        broker.kill()

    # Room again (the operator grows the volume), and a restart: every acknowledged
    # message reaches the subscriber.
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    broker.start()
    try:
        back = Client(broker, V5, client_id="away", clean=False)
        back.connect(SessionExpiryInterval=3600)
        assert back.connack.session_present
        got = back.recv_n(acked, timeout=60)
        assert all(m.payload == PAYLOAD for m in got)
        back.close()
    finally:
        broker.kill()
