"""The README example with the mosquitto command-line clients, exactly as written there."""

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


def _wait_for_subscription(broker, timeout=5.0) -> None:
    """Waits until the broker counts a subscription (admin /metrics), so that the single
    publish below cannot overtake mosquitto_sub's SUBSCRIBE; at least half a second."""
    time.sleep(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if broker.metrics().get("fleetmq_subscriptions_current", 0) >= 1:
                return
        except Exception:  # noqa: BLE001 - metrics are not what this test checks
            pass
        time.sleep(0.1)


def test_readme_mosquitto_pub_sub_round_trip(broker):
    sub_bin, pub_bin = _need("mosquitto_sub"), _need("mosquitto_pub")
    port = str(broker.port)
    sub = subprocess.Popen(
        [sub_bin, "-h", "127.0.0.1", "-p", port, "-t", "sensors/#", "-C", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_subscription(broker)
        assert sub.poll() is None, f"mosquitto_sub exited early: {sub.communicate()}"
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
