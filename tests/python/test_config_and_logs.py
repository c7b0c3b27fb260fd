"""Configuration from three places (file, --set flags, FLEETMQ_<TABLE>__<KEY> variables)
and the logs' formats, levels and fields, seen from outside the running binary."""

import json
import os
import subprocess
import time

import pytest

from fleetmq_testlib import Broker, BrokerError, V5, broker_binary


def start(tmp_path, name, config=None, extra_args=(), extra_env=None) -> Broker:
    b = Broker(broker_binary(), tmp_path / name, config=config, name=name,
               extra_args=extra_args, extra_env=extra_env)
    try:
        return b.start()
    except BrokerError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def brokers():
    started: list[Broker] = []
    yield started
    for b in started:
        b.stop()


def test_a_set_flag_beats_the_file_and_a_variable_beats_both(tmp_path, brokers,
                                                              client_factory):
    b = start(tmp_path, "over",
              config={"mqtt": {"max_packet_size": 4096, "max_topic_levels": 8}},
              extra_args=["--set", "mqtt.max_packet_size=1024",
                          "--set", "mqtt.max_topic_levels=4"],
              extra_env={"FLEETMQ_MQTT__MAX_TOPIC_LEVELS": "2"})
    brokers.append(b)
    c = client_factory(version=V5, on=b)
    assert getattr(c.connack_properties, "MaximumPacketSize", None) == 1024, \
        "--set mqtt.max_packet_size should replace the file's 4096"
    codes = c.subscribe(["a/b", "a/b/c"], qos=1, check=False)
    assert codes == [1, 0x8F], \
        f"SUBACK {codes}: FLEETMQ_MQTT__MAX_TOPIC_LEVELS=2 should beat --set's 4 and the file's 8"


def serve_command(tmp_path, *args) -> list[str]:
    """`fleetmq serve` on ports the system picks, outside the harness (no NO_COLOR)."""
    return [str(broker_binary()), "serve", "--data-dir", str(tmp_path / "data"),
            "--mqtt-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--grpc-listen", "127.0.0.1:0", *args]


def test_worker_threads_sets_the_runtime_s_threads(tmp_path, brokers, client_factory):
    def workers(b: Broker) -> int:
        line = next(l for l in b.log_tail().splitlines() if "fleetmq listening" in l)
        return int(line.split("worker_threads=")[1].split()[0])

    b = start(tmp_path, "three", config={"worker_threads": 3})
    brokers.append(b)
    assert workers(b) == 3, b.log_tail()
    c = client_factory(version=V5, on=b)
    c.subscribe(["w/t"], qos=1)
    c.publish("w/t", "through three threads", qos=1)
    assert [m.payload for m in c.drain(1.0)] == [b"through three threads"]
    # A top-level key has no FLEETMQ_<TABLE>__<KEY> name: its own variable sets it.
    e = start(tmp_path, "from-env", extra_env={"FLEETMQ_WORKER_THREADS": "4"})
    brokers.append(e)
    assert workers(e) == 4, e.log_tail()
    # 0, the default: one per core the process may use (a cgroup quota may lower it).
    d = start(tmp_path, "default")
    brokers.append(d)
    assert 1 <= workers(d) <= len(os.sched_getaffinity(0)), d.log_tail()


def serve_until_logged(tmp_path, marker: bytes) -> bytes:
    """Runs `serve_command` with its output to a file, outside the harness, until
    `marker` is in it; returns the file's bytes."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(serve_command(tmp_path), env={"PATH": "/usr/bin:/bin"},
                                stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while marker not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    return log.read_bytes()


def test_logs_written_to_a_file_carry_no_colour_codes(tmp_path):
    # Not the harness's Broker: it sets NO_COLOR, and this is about the default.
    text = serve_until_logged(tmp_path, b"fleetmq listening")
    assert b"\x1b[" not in text, text[:2000]
    assert b"fleetmq listening node_id=1" in text, text[:2000]


def test_the_start_log_names_the_grpc_port_bound_not_the_0_asked_for(tmp_path):
    text = serve_until_logged(tmp_path, b"cluster links ready").decode()
    line = next(l for l in text.splitlines() if "cluster links ready" in l)
    port = int(line.split("grpc=127.0.0.1:")[1].split()[0])
    assert port > 0, line


def run_serve(tmp_path, args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        serve_command(tmp_path, *args), env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args,env,names", [
    (["--set", "mqtt.max_inflight=lots"], {}, ["`mqtt.max_inflight`", "--set"]),
    ([], {"FLEETMQ_MQTT__MAX_INFLIGT": "5"},
     ["max_infligt", "FLEETMQ_MQTT__MAX_INFLIGT"]),
    (["--set", "drain.rate=0"], {}, ["`drain.rate`"]),
    (["--set", "nonsense"], {}, ["KEY=VALUE"]),
])
def test_a_bad_override_stops_the_node_naming_the_key_and_its_source(tmp_path, args, env,
                                                                      names):
    done = run_serve(tmp_path, args, env)
    assert done.returncode != 0, f"the node started despite {args or env}"
    for name in names:
        assert name in done.stderr, f"{name!r} not named in:\n{done.stderr}"


def test_a_variable_that_is_not_utf8_is_left_alone_unless_it_sets_a_key(tmp_path):
    # An unrelated one must not stop the node (the config error below is the first
    # thing it says, not a panic over the environment).
    done = run_serve(tmp_path, ["--set", "drain.rate=0"], {b"OTHER_THING": b"\xff"})
    assert done.returncode != 0 and "`drain.rate`" in done.stderr, done.stderr
    assert "panicked" not in done.stderr, done.stderr
    done = run_serve(tmp_path, [], {b"FLEETMQ_MQTT__LISTEN": b"\xff"})
    assert done.returncode != 0, "the node started with an unreadable override"
    assert "FLEETMQ_MQTT__LISTEN" in done.stderr and "not UTF-8" in done.stderr, done.stderr


def log_records(broker: Broker) -> list[dict]:
    records = []
    for line in broker.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def span_fields(record: dict) -> dict:
    """Every field of every span the event happened in, merged."""
    fields = {}
    for span in record.get("spans", []):
        fields.update(span)
    return fields


def test_json_logs_carry_node_id_everywhere_and_client_id_on_connections(tmp_path, brokers,
                                                                          client_factory):
    b = start(tmp_path, "json", extra_env={"FLEETMQ_LOG_FORMAT": "json",
                                           "FLEETMQ_LOG": "info",
                                           "FLEETMQ_NODE_ID": "7"})
    brokers.append(b)
    c = client_factory(version=V5, on=b, client_id="log-me")
    c.disconnect()
    b.stop()
    records = log_records(b)
    assert records, "no JSON log lines"
    assert all(r["level"] in ("INFO", "WARN", "ERROR") for r in records), \
        "FLEETMQ_LOG=info let lower levels through"
    without = [r for r in records if span_fields(r).get("node_id") != 7]
    assert not without, f"{len(without)} records without node_id 7, e.g. {without[:2]}"
    mine = [r for r in records if span_fields(r).get("client_id") == "log-me"]
    assert mine, "no record of the client's connection carries client_id"
    assert any("listening" in r["fields"].get("message", "") for r in records)


def test_the_log_level_comes_from_the_environment(tmp_path, brokers, client_factory):
    def log_after(level: str) -> str:
        b = start(tmp_path, level, extra_env={"FLEETMQ_LOG": level})
        brokers.append(b)
        client_factory(version=V5, on=b, client_id=f"level-{level}").disconnect()
        b.stop()
        text = b.log_path.read_text(encoding="utf-8", errors="replace")
        return text.split("\n", 2)[-1]  # after the harness's own start line

    # The same work logs INFO lines at info (so their absence below means something)...
    assert " INFO " in log_after("info")
    # ...and none at warn.
    quiet = log_after("warn")
    assert " INFO " not in quiet and " DEBUG " not in quiet, quiet[-2000:]
