"""Helpers for the Python integration tests: a real `fleetmq` process and paho clients.

`Broker` starts the binary on free loopback ports with its own data directory, and
`Client` wraps a paho-mqtt 2.x client (callback API version 2) so that a test can say
"connect, subscribe, publish, receive" synchronously with generous timeouts.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

REPO_ROOT = Path(__file__).resolve().parents[2]

# Generous waits: CI machines are small and busy. No test asserts on tighter timing.
WAIT = 10.0
# How long a test listens to be sure that something does NOT arrive.
QUIET = 1.5

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
VERSIONS = {"v311": V311, "v5": V5}


class BrokerError(RuntimeError):
    pass


def broker_binary() -> Path:
    """The fleetmq binary under test: $FLEETMQ_BIN, else <target dir>/debug/fleetmq."""
    explicit = os.environ.get("FLEETMQ_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR")
    target_dir = Path(target) if target else REPO_ROOT / "target"
    if not target_dir.is_absolute():
        target_dir = REPO_ROOT / target_dir
    return target_dir / "debug" / "fleetmq"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """Render a two-level dict ({"mqtt": {"sys_interval": 1}, "node_id": 1}) as TOML."""
    top = [f"{k} = {toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    lines = list(top)
    for section, values in config.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Broker:
    """One `fleetmq serve` process on 127.0.0.1 with its own data directory."""

    host = "127.0.0.1"

    def __init__(self, binary: Path, workdir: Path, config: dict | str | None = None,
                 name: str = "fleetmq", extra_args: Iterable[str] = (),
                 extra_env: dict[str, str] | None = None):
        self.binary = binary
        self.extra_env = dict(extra_env or {})
        self.workdir = workdir
        self.name = name
        self.data_dir = workdir / "data"
        self.log_path = workdir / "fleetmq.log"
        self.config_path: Path | None = None
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.port = self.admin_port = self.grpc_port = 0
        self.starts = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if config is not None:
            self.config_path = workdir / "fleetmq.toml"
            text = config if isinstance(config, str) else to_toml(config)
            self.config_path.write_text(text, encoding="utf-8")

    # -- lifecycle ---------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [
            str(self.binary), "serve",
            "--node-id", "1",
            "--data-dir", str(self.data_dir),
            "--mqtt-listen", f"{self.host}:{self.port}",
            "--admin-listen", f"{self.host}:{self.admin_port}",
            "--grpc-listen", f"{self.host}:{self.grpc_port}",
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd + self.extra_args

    def _env(self) -> dict[str, str]:
        # FLEETMQ_* variables override flags and the file: keep only the logging ones, so
        # that the developer's shell cannot change what a test configured.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("FLEETMQ_") or k in ("FLEETMQ_LOG", "FLEETMQ_LOG_FORMAT")}
        env.setdefault("FLEETMQ_LOG", os.environ.get(
            "FLEETMQ_TEST_LOG", "info,fleetmq=debug,fleetmq_broker=debug,fleetmq_codec=debug"))
        env.setdefault("NO_COLOR", "1")
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> "Broker":
        if not self.binary.exists():
            raise BrokerError(
                f"fleetmq binary not found at {self.binary}. Build it first with "
                f"`cargo build -p fleetmq` (or set FLEETMQ_BIN to the binary to test).")
        keep_ports = self.starts > 0  # a restart keeps its ports, as clients expect
        for attempt in range(3):
            if not keep_ports:
                self.port, self.admin_port, self.grpc_port = free_ports(3)
            self.starts += 1
            with open(self.log_path, "ab") as log:
                log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=self._env(), cwd=self.workdir, start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_open(self.host, self.port):
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.kill()
                raise BrokerError(
                    f"fleetmq did not accept TCP connections on {self.host}:{self.port} "
                    f"within {timeout:.0f}s\n--- log ---\n{self.log_tail()}")
            log_text = self.log_tail()
            if "in use" in log_text.lower() and attempt < 2:
                keep_ports = False  # a port was taken between choosing and binding: retry
                continue
            raise BrokerError(
                f"fleetmq exited with status {self.proc.returncode} before accepting "
                f"connections\n--- command ---\n{' '.join(self.command())}\n--- log ---\n{log_text}")
        raise BrokerError("unreachable")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if the process has not exited after `timeout` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, hard: bool = False) -> "Broker":
        if hard:
            self.kill()
        else:
            self.stop()
        # The old socket may linger a moment; the same ports are reused.
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, max_chars: int = 60_000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text if len(text) <= max_chars else "...(cut)...\n" + text[-max_chars:]

    # -- admin HTTP --------------------------------------------------------------------
    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        url = f"http://{self.host}:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def metrics(self) -> dict[str, float]:
        """Prometheus samples as {"name{labels}": value}."""
        status, body = self.http_get("/metrics")
        if status != 200:
            raise BrokerError(f"/metrics answered {status}: {body[:500]}")
        out: dict[str, float] = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                out[key.strip()] = float(value)
            except ValueError:
                pass
        return out


# ---------------------------------------------------------------------------------------
@dataclass
class Connack:
    reason_code: int
    session_present: bool
    properties: Properties | None


@dataclass
class Disconnected:
    reason_code: int
    properties: Properties | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: Properties | None
    mid: int = 0
    at: float = field(default_factory=time.monotonic)

    def prop(self, name: str, default: Any = None) -> Any:
        if self.properties is None:
            return default
        return getattr(self.properties, name, default)


def rc_value(rc: Any) -> int:
    if isinstance(rc, ReasonCode):
        return rc.value
    return int(rc)


def props(packet_type: int, **values: Any) -> Properties:
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def publish_props(**values: Any) -> Properties:
    return props(PacketTypes.PUBLISH, **values)


class Client:
    """A paho client with its network loop in a thread and queues for what arrives."""

    _counter = 0

    def __init__(self, broker: Broker, version: int = V5, client_id: str | None = None,
                 clean: bool = True, keepalive: int = 30, manual_ack: bool = False):
        Client._counter += 1
        if client_id is None:
            client_id = f"pytest-{os.getpid()}-{Client._counter}"
        self.broker = broker
        self.version = version
        self.client_id = client_id
        self.clean = clean
        self.keepalive = keepalive
        self.paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean if version != V5 else None,
            protocol=version,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connacks: queue.Queue[Connack] = queue.Queue()
        self.disconnects: queue.Queue[Disconnected] = queue.Queue()
        self._acks: dict[int, tuple[list[int], Properties | None]] = {}
        self._ack_cv = threading.Condition()
        self.publish_results: dict[int, int] = {}
        self.connack: Connack | None = None
        self.last_disconnect: Disconnected | None = None
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_ack
        self.paho.on_unsubscribe = self._on_ack
        self.paho.on_publish = self._on_publish
        self.loop_running = False

    # -- callbacks (paho's network thread) ---------------------------------------------
    def _on_connect(self, _c, _u, flags, reason_code, properties):
        self.connacks.put(Connack(rc_value(reason_code), bool(flags.session_present), properties))

    def _on_disconnect(self, _c, _u, flags, reason_code, properties):
        code = rc_value(reason_code)
        if flags.is_disconnect_packet_from_server:
            # paho 2.1 reads the reason code of a server DISCONNECT only when properties
            # follow it (remaining length > 2) and reports 0x00 otherwise; the packet is
            # still in its input buffer during this callback, so read the code from there.
            packet = self.paho._in_packet.get("packet") or b""
            if len(packet) >= 1:
                code = packet[0]
        d = Disconnected(code, properties)
        self.disconnects.put(d)
        with self._ack_cv:
            self.last_disconnect = d
            self._ack_cv.notify_all()

    def _on_message(self, _c, _u, msg):
        self.messages.put(Received(
            topic=msg.topic, payload=bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain),
            dup=bool(msg.dup), properties=getattr(msg, "properties", None), mid=msg.mid))

    def _on_ack(self, _c, _u, mid, reason_codes, properties):
        with self._ack_cv:
            self._acks[mid] = ([rc_value(r) for r in reason_codes], properties)
            self._ack_cv.notify_all()

    def _on_publish(self, _c, _u, mid, reason_code, _properties):
        with self._ack_cv:
            self.publish_results[mid] = rc_value(reason_code)
            self._ack_cv.notify_all()

    # -- connection --------------------------------------------------------------------
    def will(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
             **properties: Any) -> "Client":
        p = props(PacketTypes.WILLMESSAGE, **properties) if properties else None
        self.paho.will_set(topic, payload, qos=qos, retain=retain, properties=p)
        return self

    def connect(self, expect_rc: int | None = 0, **connect_properties: Any) -> Connack:
        """Connects and waits for CONNACK. `connect_properties` are MQTT 5 CONNECT
        properties by paho name, e.g. SessionExpiryInterval=300."""
        kwargs: dict[str, Any] = {"keepalive": self.keepalive}
        if self.version == V5:
            kwargs["clean_start"] = self.clean
            if connect_properties:
                kwargs["properties"] = props(PacketTypes.CONNECT, **connect_properties)
        elif connect_properties:
            raise ValueError("CONNECT properties need MQTT 5")
        self.paho.connect(self.broker.host, self.broker.port, **kwargs)
        self.paho.loop_start()
        self.loop_running = True
        try:
            connack = self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(
                f"{self.client_id}: no CONNACK within {WAIT}s"
                + self._disconnect_note()) from None
        self.connack = connack
        if expect_rc is not None:
            assert connack.reason_code == expect_rc, (
                f"{self.client_id}: CONNACK reason code {connack.reason_code:#04x}, "
                f"expected {expect_rc:#04x}")
        return connack

    def _disconnect_note(self) -> str:
        d = self.last_disconnect
        if d is None:
            return ""
        reason = getattr(d.properties, "ReasonString", None) if d.properties else None
        return (f" (disconnected with reason {d.reason_code:#04x}"
                f"{', ' + repr(reason) if reason else ''})")

    @property
    def connack_properties(self) -> Properties:
        assert self.connack is not None and self.connack.properties is not None
        return self.connack.properties

    def disconnect(self, reason_code: int | None = None, **properties: Any) -> None:
        """A normal DISCONNECT (or one with an MQTT 5 reason code), then waits for the
        network loop to close the socket."""
        rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code) \
            if reason_code is not None else None
        p = props(PacketTypes.DISCONNECT, **properties) if properties else None
        self.paho.disconnect(reasoncode=rc, properties=p)
        try:
            self.disconnects.get(timeout=WAIT)
        except queue.Empty:
            pass
        self.stop_loop()

    def drop(self) -> None:
        """Closes the TCP connection without DISCONNECT: an abnormal close for the server."""
        sock = self.paho.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.stop_loop()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def stop_loop(self) -> None:
        if self.loop_running:
            self.paho.loop_stop()
            self.loop_running = False

    def wait_disconnected(self, timeout: float = WAIT) -> Disconnected:
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.client_id}: still connected after {timeout}s") from None

    # -- requests ----------------------------------------------------------------------
    def _wait_ack(self, mid: int, what: str) -> tuple[list[int], Properties | None]:
        deadline = time.monotonic() + WAIT
        with self._ack_cv:
            while mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0 or self.last_disconnect is not None:
                    raise AssertionError(f"{self.client_id}: no {what} for mid {mid}"
                                         + self._disconnect_note())
                self._ack_cv.wait(left)
            return self._acks.pop(mid)

    def subscribe(self, topic: str | list, qos: int = 0, *, no_local: bool = False,
                  retain_as_published: bool = False, retain_handling: int = 0,
                  subscription_id: int | None = None, check: bool = True,
                  **properties: Any) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS / reason codes. With
        `check`, asserts that every filter was granted exactly `qos`."""
        sub_props = None
        if subscription_id is not None:
            properties["SubscriptionIdentifier"] = subscription_id
        if properties:
            sub_props = props(PacketTypes.SUBSCRIBE, **properties)
        if self.version == V5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local,
                                    retainAsPublished=retain_as_published,
                                    retainHandling=retain_handling)
            if isinstance(topic, list):
                arg = [(t, opts) for t in topic]
                rc, mid = self.paho.subscribe(arg, properties=sub_props)
            else:
                rc, mid = self.paho.subscribe(topic, options=opts, properties=sub_props)
        else:
            if no_local or retain_as_published or retain_handling or sub_props:
                raise ValueError("subscribe options need MQTT 5")
            if isinstance(topic, list):
                rc, mid = self.paho.subscribe([(t, qos) for t in topic])
            else:
                rc, mid = self.paho.subscribe(topic, qos=qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe not sent: {rc}"
        codes, _ = self._wait_ack(mid, "SUBACK")
        if check:
            n = len(topic) if isinstance(topic, list) else 1
            assert codes == [qos] * n, f"SUBACK {codes} for {topic!r}, expected {[qos] * n}"
        return codes

    def unsubscribe(self, topic: str | list[str], **properties: Any) -> list[int]:
        p = props(PacketTypes.UNSUBSCRIBE, **properties) if properties else None
        rc, mid = self.paho.unsubscribe(topic, properties=p)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe not sent: {rc}"
        codes, _ = self._wait_ack(mid, "UNSUBACK")
        return codes

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False, properties: Properties | None = None,
                **property_values: Any) -> int:
        """PUBLISH and wait until it is complete (written for QoS 0, PUBACK for QoS 1,
        PUBCOMP for QoS 2). Returns the MQTT 5 reason code of the acknowledgement."""
        if property_values:
            assert properties is None
            properties = publish_props(**property_values)
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), (
            f"{self.client_id}: publish to {topic!r} (QoS {qos}) not completed within {WAIT}s"
            + self._disconnect_note())
        with self._ack_cv:
            return self.publish_results.pop(info.mid, 0)

    # -- receiving ---------------------------------------------------------------------
    def recv(self, timeout: float = WAIT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.client_id}: no message within {timeout}s" + self._disconnect_note()
            ) from None

    def recv_n(self, n: int, timeout: float = WAIT) -> list[Received]:
        deadline = time.monotonic() + timeout
        out: list[Received] = []
        while len(out) < n:
            left = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: got {len(out)} of {n} messages within {timeout}s: "
                    f"{[(m.topic, m.payload[:40]) for m in out]}" + self._disconnect_note()
                ) from None
        return out

    def drain(self, within: float = QUIET) -> list[Received]:
        """Everything that arrives in the next `within` seconds."""
        deadline = time.monotonic() + within
        out: list[Received] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                return out

    def expect_nothing(self, within: float = QUIET, what: str = "") -> None:
        got = self.drain(within)
        assert not got, (f"{self.client_id}: expected no message{' ' + what if what else ''}, "
                         f"got {[(m.topic, m.payload[:60], m.retain) for m in got]}")

    def close(self) -> None:
        """Teardown: stops the loop and closes the socket, whatever the state."""
        try:
            if self.paho.is_connected():
                self.paho.disconnect()
        except Exception:  # noqa: BLE001 - teardown must not raise
            pass
        try:
            self.stop_loop()
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------------------------------
# Clusters: three `fleetmq serve` processes forming one Raft group.
class ClusterNode(Broker):
    """One node of a cluster: its id, ports chosen by the cluster (every node's
    `--peers` names every node's gRPC port, so they never move) and `--peers`."""

    def __init__(self, binary: Path, workdir: Path, node_id: int, ports: list[int],
                 peers: str, config: dict | str | None = None):
        super().__init__(binary, workdir, config=config, name=f"node{node_id}")
        self.node_id = node_id
        self.port, self.admin_port, self.grpc_port = ports
        self.peers = peers

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--node-id") + 1] = str(self.node_id)
        return cmd + ["--peers", self.peers]

    def spawn(self) -> None:
        """Starts the process on its ports without waiting for it."""
        if not self.binary.exists():
            raise BrokerError(
                f"fleetmq binary not found at {self.binary}. Build it first with "
                f"`cargo build -p fleetmq` (or set FLEETMQ_BIN to the binary to test).")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env(), cwd=self.workdir, start_new_session=True)

    def ready(self) -> bool:
        """Accepts MQTT connections and answers GET /readyz with 200."""
        if not port_open(self.host, self.port):
            return False
        try:
            status, _ = self.http_get("/readyz", timeout=2.0)
        except OSError:
            return False
        return status == 200

    def start(self, timeout: float = 30.0) -> "ClusterNode":
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"{self.name} exited with {self.proc.returncode}\n"
                                  f"--- log ---\n{self.log_tail(20_000)}")
            if self.ready():
                return self
            time.sleep(0.1)
        raise BrokerError(f"{self.name} not ready within {timeout:.0f}s\n"
                          f"--- log ---\n{self.log_tail(20_000)}")

    def status(self, timeout: float = 10.0) -> dict:
        """`fleetmq ctl status --output json` of this node."""
        out = subprocess.run(
            [str(self.binary), "ctl", "status", "--admin", f"{self.host}:{self.admin_port}",
             "--output", "json"],
            capture_output=True, timeout=timeout, env=self._env(), check=False)
        if out.returncode != 0:
            raise BrokerError(f"ctl status of {self.name} failed: "
                              f"{out.stderr.decode('utf-8', 'replace').strip()}")
        import json
        return json.loads(out.stdout)


class Cluster:
    """Three nodes on loopback ports chosen together, started together (the lowest id
    initializes the Raft group and waits for a quorum)."""

    def __init__(self, binary: Path, workdir: Path, size: int = 3,
                 config: dict | str | None = None):
        ports = free_ports(3 * size)
        peers = ",".join(f"{i + 1}=127.0.0.1:{ports[3 * i + 2]}" for i in range(size))
        self.nodes = [ClusterNode(binary, workdir / f"node{i + 1}", i + 1,
                                  ports[3 * i:3 * i + 3], peers, config=config)
                      for i in range(size)]

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    def start(self, timeout: float = 30.0) -> "Cluster":
        for n in self.nodes:
            n.spawn()
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        while pending:
            for n in list(pending):
                if n.proc is not None and n.proc.poll() is not None:
                    raise BrokerError(f"{n.name} exited with {n.proc.returncode} while the "
                                      f"cluster started\n{self.log_tails()}")
                if n.ready():
                    pending.remove(n)
            if pending and time.monotonic() > deadline:
                raise BrokerError(f"{[n.name for n in pending]} not ready (GET /readyz) within "
                                  f"{timeout:.0f}s\n{self.log_tails()}")
            time.sleep(0.1)
        self.leader()
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL one node."""
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout: float = 30.0) -> ClusterNode:
        """Starts a node again on the same ports and data, waits until it is ready."""
        n = self.node(node_id)
        n.kill()
        return n.start(timeout)

    def leader(self, among: list[int] | None = None, timeout: float = 30.0) -> int:
        """The leader every node of `among` (default: the running ones) names, once they
        agree and it is one of them."""
        ids = among or [n.node_id for n in self.nodes if n.running]
        deadline = time.monotonic() + timeout
        last: dict[int, Any] = {}
        while True:
            for i in ids:
                try:
                    last[i] = self.node(i).status()
                except (BrokerError, subprocess.TimeoutExpired, ValueError) as e:
                    last[i] = str(e)
            leaders = {s.get("leader_id") if isinstance(s, dict) else None
                       for s in last.values()}
            if len(leaders) == 1:
                leader = leaders.pop()
                if leader in ids and isinstance(last[leader], dict) \
                        and last[leader].get("state") == "leader":
                    return leader
            if time.monotonic() > deadline:
                raise BrokerError(f"nodes {ids} did not agree on a leader within {timeout:.0f}s: "
                                  f"{last}\n{self.log_tails()}")
            time.sleep(0.2)

    def log_tails(self, max_chars: int = 6_000) -> str:
        return "\n".join(f"--- {n.name} log ---\n{n.log_tail(max_chars)}" for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()


def publish_within(client: Client, topic: str, payload: bytes | str, qos: int,
                   timeout: float) -> bool:
    """PUBLISH and wait up to `timeout` for it to complete (PUBACK / PUBCOMP); whether
    it did. Unlike `Client.publish`, a slow acknowledgement is not a failure here."""
    info = client.paho.publish(topic, payload, qos=qos)
    try:
        info.wait_for_publish(timeout=timeout)
    except (RuntimeError, ValueError):  # not connected, or the queue refused it
        return False
    return info.is_published()
