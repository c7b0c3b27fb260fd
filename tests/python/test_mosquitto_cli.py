"""The README's examples with the mosquitto command-line clients, as written there (with
`-p PORT` added, since each test broker listens on a free port instead of 1883)."""

import select
import shutil
import subprocess
import time

import pytest


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: run scripts/install-test-deps.sh "
                    f"(it installs Debian's mosquitto-clients)", pytrace=False)
    return path


def _wait_for_subscriptions(broker, count: int = 1, timeout: float = 5.0) -> None:
    """Waits until the broker counts `count` subscriptions (admin /metrics), so that the
    single publish that follows cannot overtake mosquitto_sub's SUBSCRIBE; at least
    half a second in any case."""
    time.sleep(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if broker.metrics().get("fleetmq_subscriptions_current", 0) >= count:
                return
        except Exception:  # noqa: BLE001 - metrics are not what this test checks
            pass
        time.sleep(0.1)


def _readline(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"mosquitto_sub printed nothing within {timeout}s"
    return proc.stdout.readline()


def test_readme_mosquitto_pub_sub_example(broker):
    """mosquitto_sub -h 127.0.0.1 -p 1883 -t 'sensors/#' -v &
    mosquitto_pub -h 127.0.0.1 -p 1883 -t sensors/t1 -m 21.5
    # the subscriber prints: sensors/t1 21.5"""
    sub_bin, pub_bin = _need("mosquitto_sub"), _need("mosquitto_pub")
    port = str(broker.port)
    sub = subprocess.Popen(
        [sub_bin, "-h", "127.0.0.1", "-p", port, "-t", "sensors/#", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_subscriptions(broker)
        assert sub.poll() is None, f"mosquitto_sub exited early: {sub.communicate()}"
        pub = subprocess.run(
            [pub_bin, "-h", "127.0.0.1", "-p", port, "-t", "sensors/t1", "-m", "21.5"],
            capture_output=True, text=True, timeout=10)
        assert pub.returncode == 0, f"mosquitto_pub failed: {pub.stderr}"
        assert _readline(sub) == "sensors/t1 21.5\n"
    finally:
        sub.kill()
        sub.wait()

    # The README then greps the metrics: `curl -s .../metrics | grep fleetmq_messages`.
    status, body = broker.http_get("/metrics")
    assert status == 200
    assert [line for line in body.splitlines() if line.startswith("fleetmq_messages")]


def test_mosquitto_sub_count_one(broker):
    """mosquitto_sub ... -t 'sensors/#' -C 1 exits after printing the one message."""
    sub_bin, pub_bin = _need("mosquitto_sub"), _need("mosquitto_pub")
    port = str(broker.port)
    sub = subprocess.Popen(
        [sub_bin, "-h", "127.0.0.1", "-p", port, "-t", "sensors/#", "-C", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_subscriptions(broker)
        pub = subprocess.run(
            [pub_bin, "-h", "127.0.0.1", "-p", port, "-t", "sensors/t1", "-m", "21.5"],
            capture_output=True, text=True, timeout=10)
        assert pub.returncode == 0, f"mosquitto_pub failed: {pub.stderr}"
        out, err = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}: {err}"
    assert out == "21.5\n"


def test_readme_persistent_session_example(broker):
    """mosquitto_sub -h 127.0.0.1 -t 'alerts/#' -q 1 -i watcher -c -C 1 -W 2 || true
    mosquitto_pub -h 127.0.0.1 -t alerts/door -m open -q 1
    mosquitto_sub -h 127.0.0.1 -t 'alerts/#' -q 1 -i watcher -c -C 1   # prints: open"""
    sub_bin, pub_bin = _need("mosquitto_sub"), _need("mosquitto_pub")
    port = str(broker.port)
    first = subprocess.run(
        [sub_bin, "-h", "127.0.0.1", "-p", port, "-t", "alerts/#", "-q", "1", "-i", "watcher",
         "-c", "-C", "1", "-W", "2"], capture_output=True, text=True, timeout=20)
    # `|| true` in the README: -W 2 ends it with a timeout status after 2 s of silence.
    assert first.stdout == "", f"nothing was published yet, got {first.stdout!r}"
    assert "Error" not in first.stderr and "refused" not in first.stderr, first.stderr
    pub = subprocess.run(
        [pub_bin, "-h", "127.0.0.1", "-p", port, "-t", "alerts/door", "-m", "open", "-q", "1"],
        capture_output=True, text=True, timeout=10)
    assert pub.returncode == 0, pub.stderr
    second = subprocess.run(
        [sub_bin, "-h", "127.0.0.1", "-p", port, "-t", "alerts/#", "-q", "1", "-i", "watcher",
         "-c", "-C", "1"], capture_output=True, text=True, timeout=20)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "open\n"


@pytest.mark.parametrize("proto", ["mqttv311", "mqttv5"])
def test_mosquitto_retained_qos2(broker, proto):
    sub_bin, pub_bin = _need("mosquitto_sub"), _need("mosquitto_pub")
    port = str(broker.port)
    pub = subprocess.run(
        [pub_bin, "-h", "127.0.0.1", "-p", port, "-V", proto, "-q", "2", "-r",
         "-t", "cli/state", "-m", "on"], capture_output=True, text=True, timeout=10)
    assert pub.returncode == 0, pub.stderr
    sub = subprocess.run(
        [sub_bin, "-h", "127.0.0.1", "-p", port, "-V", proto, "-q", "2",
         "-t", "cli/#", "-C", "1", "-v", "-W", "10"],
        capture_output=True, text=True, timeout=20)
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout == "cli/state on\n"
