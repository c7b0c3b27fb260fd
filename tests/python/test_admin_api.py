"""The admin API (/api/v1) and `fleetmq ctl`, its client: schemathesis checks every
answer of a running node against docs/openapi.yaml; the bearer token is required;
paho-mqtt clients are listed, shown, kicked (DISCONNECT 0x98, session kept), their
sessions and subscriptions shown, retained messages listed and deleted."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fleetmq_testlib import V5, broker_binary

TOKEN = "test-token-0123456789abcdef"
OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
ADMINISTRATIVE_ACTION = 0x98
# Operations that change the cluster's shape or end the node: tested on their own.
NOT_FUZZED = ("addMember", "removeMember", "drainMember", "drainNode")


@pytest.fixture
def node(broker_factory, tmp_path: Path):
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    broker = broker_factory(config={"admin": {"api_token_file": str(token_file)}})
    broker.token_file = token_file
    return broker


def _api(broker, method: str, path: str, token: str | None = TOKEN) -> tuple[int, dict | None]:
    request = urllib.request.Request(
        f"http://{broker.host}:{broker.admin_port}{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body else None


def _ctl(broker, *args: str, json_output: bool = False, ok: bool = True):
    cmd = [str(broker_binary()), "ctl", "--admin", f"{broker.host}:{broker.admin_port}",
           "--token-file", str(broker.token_file), *args]
    if json_output:
        cmd += ["--output", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if ok:
        assert out.returncode == 0, f"ctl {args}: {out.stderr}"
    return json.loads(out.stdout) if json_output and ok else out


def test_every_answer_matches_docs_openapi_yaml(node, client_factory):
    sub = client_factory(version=V5, client_id="oa-sub", clean=False, on=node,
                         SessionExpiryInterval=600)
    sub.subscribe("oa/#", qos=1)
    pub = client_factory(version=V5, client_id="oa-pub", on=node)
    pub.publish("oa/retained", "kept", qos=1, retain=True)

    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", str(OPENAPI),
           "--url", f"http://{node.host}:{node.admin_port}",
           "--header", f"Authorization: Bearer {TOKEN}",
           "--checks", "all", "--max-examples", "60", "--seed", "20261130",
           "--warnings", "off", "--no-color"]
    for operation in NOT_FUZZED:
        cmd += ["--exclude-operation-id", operation]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                         cwd=node.workdir)
    assert out.returncode == 0, out.stdout[-20_000:] + out.stderr[-5_000:]
    assert " passed" in out.stdout
    assert node.running, "the fuzzing must not bring the node down"


def test_the_api_wants_the_token(node):
    status, body = _api(node, "GET", "/api/v1/status", token=None)
    assert status == 401 and "bearer token" in body["error"]
    assert _api(node, "GET", "/api/v1/status", token=TOKEN[:-1] + "X")[0] == 401
    status, body = _api(node, "GET", "/api/v1/status")
    assert status == 200 and body["node_id"] == 1 and body["ready"] is True
    # Probes and Prometheus need no token.
    assert node.http_get("/readyz")[0] == 200
    assert node.http_get("/metrics")[0] == 200


def test_ctl_lists_shows_and_kicks_clients_and_keeps_their_sessions(node, client_factory):
    dev = client_factory(version=V5, client_id="ctl-dev/1", clean=False, on=node,
                         SessionExpiryInterval=600)
    dev.subscribe("plant/+/temp", qos=1)
    old = client_factory(version=4, client_id="ctl-old", on=node)

    listed = _ctl(node, "clients", "list", json_output=True)
    ids = [c["client_id"] for c in listed["clients"]]
    assert ids == ["ctl-dev/1", "ctl-old"]
    shown = _ctl(node, "clients", "show", "ctl-dev/1", json_output=True)
    assert (shown["protocol"], shown["listener"], shown["session_expiry_interval"]) == \
        ("5.0", "mqtt", 600)
    assert _ctl(node, "clients", "show", "ctl-old", json_output=True)["protocol"] == "3.1.1"
    text = _ctl(node, "clients", "list").stdout
    assert "2 clients connected to node 1" in text and "ctl-dev/1" in text

    session = _ctl(node, "session", "show", "ctl-dev/1", json_output=True)
    assert session["connected"] and session["persistent"] and session["node"] == 1
    assert [s["filter"] for s in session["subscriptions"]] == ["plant/+/temp"]
    assert session["subscriptions"][0]["qos"] == 1
    subs = _ctl(node, "subscriptions", "--client-id", "ctl-dev/1", json_output=True)
    assert [(s["client_id"], s["filter"]) for s in subs["subscriptions"]] == \
        [("ctl-dev/1", "plant/+/temp")]

    text = _ctl(node, "clients", "kick", "ctl-dev/1").stdout
    assert "disconnected" in text
    assert dev.wait_disconnected().reason_code == ADMINISTRATIVE_ACTION
    # Offline now, with what was published meanwhile waiting in its session.
    pub = client_factory(version=V5, on=node)
    pub.publish("plant/7/temp", "21.5", qos=1)
    session = _ctl(node, "session", "show", "ctl-dev/1", json_output=True)
    assert not session["connected"] and session["queued"] == 1
    back = client_factory(version=V5, client_id="ctl-dev/1", clean=False, on=node,
                          connect=False)
    assert back.connect(SessionExpiryInterval=600).session_present
    assert back.recv().payload == b"21.5"

    missing = _ctl(node, "clients", "kick", "nobody", ok=False)
    assert missing.returncode != 0 and "not connected to node 1" in missing.stderr
    missing = _ctl(node, "session", "show", "nobody", ok=False)
    assert missing.returncode != 0 and "no session" in missing.stderr
    old.close()


def test_ctl_lists_and_deletes_retained_messages(node, client_factory):
    pub = client_factory(version=V5, on=node)
    pub.publish("site/a/state", "on", qos=1, retain=True)
    pub.publish("site/b/state", b"\xff\xfe", qos=1, retain=True)
    pub.publish("other/state", "x", qos=1, retain=True)

    listed = _ctl(node, "retained", "list", "--filter", "site/+/state", json_output=True)
    assert [(r["topic"], r["payload_utf8"]) for r in listed["retained"]] == \
        [("site/a/state", "on"), ("site/b/state", None)]
    assert listed["retained"][1]["payload_base64"] == "//4="
    text = _ctl(node, "retained", "list", "--filter", "site/#").stdout
    assert "site/a/state" in text and "(binary)" in text and "other/state" not in text

    _ctl(node, "retained", "delete", "site/a/state")
    late = client_factory(version=V5, on=node)
    late.subscribe("site/#", qos=1)
    assert [m.topic for m in late.drain()] == ["site/b/state"]
    again = _ctl(node, "retained", "delete", "site/a/state", ok=False)
    assert again.returncode != 0 and "no retained message" in again.stderr
    bad = _ctl(node, "retained", "list", "--filter", "a/#/b", ok=False)
    assert bad.returncode != 0 and "400" in bad.stderr

    # The deletion was stored: a restart does not bring the message back.
    node.restart()
    listed = _ctl(node, "retained", "list", json_output=True)
    assert [r["topic"] for r in listed["retained"]] == ["other/state", "site/b/state"]


def test_ctl_drain_wait_returns_once_the_node_has_stopped(node, client_factory):
    c = client_factory(version=V5, on=node)
    out = _ctl(node, "drain", "--wait", "--timeout", "30")
    assert "is draining" in out.stdout and "drained and stopped" in out.stdout
    assert c.wait_disconnected().reason_code == 0x8B
    assert node.proc.wait(timeout=10) == 0


# ---- the operations schemathesis leaves out, checked one by one on a cluster ----------

def _openapi_response_schema(doc: dict, path: str, method: str, status: int) -> dict:
    """The JSON schema docs/openapi.yaml gives for this answer, $refs inlined and
    OpenAPI 3.0's `nullable` turned into JSON Schema's null type."""
    def resolve(node):
        if isinstance(node, list):
            return [resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target)
        out = {k: resolve(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable"):
            if isinstance(out.get("type"), str):
                out["type"] = [out["type"], "null"]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out

    responses = doc["paths"][path][method]["responses"]
    assert str(status) in responses, \
        f"{method.upper()} {path} answered {status}, which docs/openapi.yaml does not list"
    response = resolve(responses[str(status)])
    return response["content"]["application/json"]["schema"]


def test_membership_and_drain_answers_match_docs_openapi_yaml(tmp_path):
    import jsonschema
    import yaml

    from fleetmq_testlib import BrokerError, Cluster

    doc = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    cluster = Cluster(broker_binary(), tmp_path / "cluster")
    try:
        cluster.start()
    except BrokerError as e:
        cluster.stop()
        pytest.fail(str(e), pytrace=False)
    try:
        n1 = cluster.node(1)
        n1.token_file = None

        def check(node, method, path, template, want, body=None):
            url = f"http://{node.host}:{node.admin_port}{path}"
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(url, method=method.upper(), data=data)
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, raw = response.status, response.read()
            except urllib.error.HTTPError as e:
                status, raw = e.code, e.read()
            answer = json.loads(raw) if raw else None
            assert status == want, f"{method.upper()} {path}: {status} {answer}"
            schema = _openapi_response_schema(doc, template, method, status)
            jsonschema.validate(answer, schema)
            return answer

        members = "/api/v1/members"
        # Loopback callers need no token when the node has none configured.
        gone = check(n1, "delete", f"{members}/3", "/api/v1/members/{id}", 200)
        assert 3 not in [m["id"] for m in gone["members"]], gone
        check(n1, "delete", f"{members}/99", "/api/v1/members/{id}", 404)
        back = check(n1, "post", members, members, 200,
                     body={"id": 3, "address": f"127.0.0.1:{cluster.node(3).grpc_port}"})
        assert 3 in [m["id"] for m in back["members"]], back
        check(n1, "post", members, members, 400, body={"id": 0, "address": "x"})
        check(n1, "post", f"{members}/99/drain", "/api/v1/members/{id}/drain", 404)
        check(n1, "post", f"{members}/3/drain", "/api/v1/members/{id}/drain", 202)
        check(cluster.node(2), "post", "/api/v1/drain", "/api/v1/drain", 202)
        for node in (cluster.node(2), cluster.node(3)):
            assert node.proc.wait(timeout=60) == 0, f"node {node.node_id} did not drain"
    finally:
        cluster.stop()
