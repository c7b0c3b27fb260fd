"""MQTT over TLS (with and without client certificates), WebSocket and secure WebSocket,
with clients written by others: mosquitto_pub/mosquitto_sub for TLS and mutual TLS,
paho-mqtt for WebSocket and secure WebSocket. The certificates are made for each run
with the openssl command-line tool: a test CA, a server certificate for 127.0.0.1, a
client certificate with the common name `device-7`, and a client certificate from a
CA the broker does not trust."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fleetmq_testlib import free_ports

WAIT = 10.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run scripts/install-test-deps.sh", pytrace=False)
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    openssl = _tool("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    def ca(name: str) -> None:
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=FleetMQ test {name}")

    def issue(name: str, cn: str, by: str, ext: str) -> None:
        (d / f"{name}.ext").write_text(ext)
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{by}.crt", "-CAkey", f"{by}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")

    ca("ca")
    ca("rogue-ca")
    issue("server", "localhost", "ca",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue("device", "device-7", "ca", "extendedKeyUsage=clientAuth\n")
    issue("rogue", "device-7", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return d


@pytest.fixture
def secured(broker_factory, certs):
    """A broker with a TLS, a mutual-TLS, a WebSocket and a secure WebSocket listener;
    returns (broker, ports by listener name)."""
    tls_port, mtls_port, ws_port, wss_port = free_ports(4)
    server = f'cert_file = "{certs / "server.crt"}"\nkey_file = "{certs / "server.key"}"\n'
    config = f"""
[[listeners]]
name = "tls"
kind = "tls"
listen = "127.0.0.1:{tls_port}"
[listeners.tls]
{server}
[[listeners]]
name = "mtls"
kind = "tls"
listen = "127.0.0.1:{mtls_port}"
[listeners.tls]
{server}client_ca_file = "{certs / "ca.crt"}"
require_client_cert = true
cn_as_username = true

[[listeners]]
name = "ws"
kind = "ws"
listen = "127.0.0.1:{ws_port}"

[[listeners]]
name = "wss"
kind = "wss"
listen = "127.0.0.1:{wss_port}"
ws_path = "/mqtt"
[listeners.tls]
{server}"""
    broker = broker_factory(config=config)
    return broker, {"tls": tls_port, "mtls": mtls_port, "ws": ws_port, "wss": wss_port}


def _wait_subscribed(broker, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if broker.metrics().get("fleetmq_subscriptions_current", 0) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"the broker never counted {count} subscription(s)")


def _metric(broker, name: str, listener: str, transport: str) -> float:
    return broker.metrics().get(f'{name}{{listener="{listener}",transport="{transport}"}}', 0)


def _wait_metric(broker, name: str, listener: str, transport: str, at_least: float) -> None:
    """Waits until the counter reaches `at_least`: the server counts a failed handshake
    after it has answered it."""
    deadline = time.monotonic() + WAIT
    while (value := _metric(broker, name, listener, transport)) < at_least:
        assert time.monotonic() < deadline, f"{name}{{listener={listener}}} is {value}, not {at_least}"
        time.sleep(0.05)


def test_mosquitto_clients_over_tls_reach_plain_tcp_clients_and_back(secured, certs):
    broker, ports = secured
    sub = subprocess.Popen(
        [_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(ports["tls"]), "--cafile",
         str(certs / "ca.crt"), "-t", "tls/#", "-C", "2", "-v", "-q", "1", "-W", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_subscribed(broker, 1)
        # From a plain TCP client to the TLS subscriber ...
        subprocess.run([_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.port),
                        "-t", "tls/plain", "-m", "from-tcp", "-q", "1"], check=True, timeout=WAIT)
        # ... and from a TLS client.
        subprocess.run([_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(ports["tls"]),
                        "--cafile", str(certs / "ca.crt"), "-t", "tls/secure", "-m", "from-tls",
                        "-q", "1"], check=True, timeout=WAIT)
        out, err = sub.communicate(timeout=WAIT)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    assert out.splitlines() == ["tls/plain from-tcp", "tls/secure from-tls"]
    assert _metric(broker, "fleetmq_listener_accepted_total", "tls", "tls") >= 2


def test_plain_mqtt_on_the_tls_port_is_closed_and_counted(secured):
    broker, ports = secured
    with socket.create_connection(("127.0.0.1", ports["tls"]), timeout=WAIT) as s:
        # A CONNECT where a TLS ClientHello belongs.
        s.sendall(bytes.fromhex("101000044d5154540402003c0004746573745f"))
        s.settimeout(WAIT)
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert b"\x20" not in answer[:1], f"no CONNACK may come back, got {answer!r}"
    _wait_metric(broker, "fleetmq_listener_handshake_failed_total", "tls", "tls", 1)


def test_mutual_tls_takes_the_certificate_common_name_as_username(secured, certs):
    broker, ports = secured
    pub = [_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(ports["mtls"]), "--cafile",
           str(certs / "ca.crt"), "-t", "mtls/t", "-m", "x", "-q", "1"]
    ok = subprocess.run(pub + ["--cert", str(certs / "device.crt"), "--key",
                               str(certs / "device.key"), "-i", "mtls-ok", "-u", "mallory"],
                        capture_output=True, text=True, timeout=WAIT)
    assert ok.returncode == 0, ok.stderr
    log = broker.log_tail()
    line = next((l for l in log.splitlines() if "client connected" in l and "mtls-ok" in l), "")
    assert 'username="device-7"' in line, f"the CONNECT's username must not win: {line!r}"

    no_cert = subprocess.run(pub + ["-i", "mtls-none"], capture_output=True, text=True,
                             timeout=WAIT)
    assert no_cert.returncode != 0, "a client without a certificate got in"
    rogue = subprocess.run(pub + ["--cert", str(certs / "rogue.crt"), "--key",
                                  str(certs / "rogue.key"), "-i", "mtls-rogue"],
                           capture_output=True, text=True, timeout=WAIT)
    assert rogue.returncode != 0, "a certificate from an untrusted CA got in"
    connected = [l for l in broker.log_tail().splitlines() if "client connected" in l]
    assert not any("mtls-none" in l or "mtls-rogue" in l for l in connected)
    _wait_metric(broker, "fleetmq_listener_handshake_failed_total", "mtls", "tls", 2)


def _paho(port: int, version: int, certs: Path | None, path: str = "/mqtt") -> tuple:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:8]}",
                         protocol=version, transport="websockets")
    client.ws_set_options(path=path)
    if certs is not None:
        client.tls_set(ca_certs=str(certs / "ca.crt"))
    got: queue.Queue = queue.Queue()
    connected: queue.Queue = queue.Queue()
    client.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload))
    client.on_connect = lambda _c, _u, _f, rc, _p: connected.put(rc)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    rc = connected.get(timeout=WAIT)
    assert not rc.is_failure, f"CONNACK {rc}"
    return client, got


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_paho_over_websocket_publishes_and_receives(secured, certs, version, secure):
    broker, ports = secured
    port = ports["wss" if secure else "ws"]
    client, got = _paho(port, version, certs if secure else None)
    try:
        topic = f"ws/{uuid.uuid4().hex[:8]}"
        sub = client.subscribe(topic, qos=1)
        assert sub[0] == mqtt.MQTT_ERR_SUCCESS
        _wait_subscribed(broker, 1)
        # One message over the WebSocket itself, one from a plain TCP client.
        client.publish(topic, b"over-websocket", qos=1).wait_for_publish(WAIT)
        subprocess.run([_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.port),
                        "-t", topic, "-m", "over-tcp", "-q", "1"], check=True, timeout=WAIT)
        received = sorted([got.get(timeout=WAIT), got.get(timeout=WAIT)])
        assert received == [(topic, b"over-tcp"), (topic, b"over-websocket")]
    finally:
        client.loop_stop()
        client.disconnect()


def _upgrade(port: int, path: str, protocol: str | None) -> str:
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n")
    if protocol is not None:
        request += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall((request + "\r\n").encode())
        return s.recv(4096).decode("latin-1").split("\r\n")[0]


def test_websocket_upgrade_needs_the_path_and_the_mqtt_subprotocol(secured):
    broker, ports = secured
    assert " 101 " in _upgrade(ports["ws"], "/mqtt", "mqtt") + " "
    assert " 404 " in _upgrade(ports["ws"], "/other", "mqtt") + " "
    assert " 400 " in _upgrade(ports["ws"], "/mqtt", None) + " "
    assert " 400 " in _upgrade(ports["ws"], "/mqtt", "chat") + " "
    _wait_metric(broker, "fleetmq_listener_handshake_failed_total", "ws", "ws", 3)


def test_a_bad_tls_file_names_its_key(tmp_path, certs):
    from fleetmq_testlib import broker_binary
    config = tmp_path / "bad.toml"
    config.write_text(f"""
[[listeners]]
name = "tls"
kind = "tls"
listen = "127.0.0.1:0"
[listeners.tls]
cert_file = "{tmp_path / "missing.crt"}"
key_file = "{certs / "server.key"}"
""")
    out = subprocess.run([str(broker_binary()), "config", "check", str(config)],
                         capture_output=True, text=True, timeout=WAIT)
    assert out.returncode != 0
    assert "listeners[0].tls.cert_file" in out.stdout + out.stderr, out.stdout + out.stderr
