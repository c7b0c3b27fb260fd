"""Authentication and access rules, with paho-mqtt and mosquitto clients: a password
file written by `fleetmq passwd`, anonymous access off, JSON Web Tokens (HS256 signed
here with the standard library, RS256 signed with the openssl command-line tool) whose
claims name the user and carry its rules, and `[acl]` rules with %u and %c."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleetmq_testlib import V5, broker_binary

V311 = 4
SECRET = "a-test-secret-of-at-least-32-bytes!!"


def _passwd(path: Path, user: str, password: str) -> None:
    out = subprocess.run([str(broker_binary()), "passwd", str(path), user],
                         input=password + "\n", capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _rs256(claims: dict, key: Path) -> str:
    head = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    openssl = shutil.which("openssl") or pytest.fail("openssl missing", pytrace=False)
    sig = subprocess.run([openssl, "dgst", "-sha256", "-sign", str(key)],
                         input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
    return f"{head}.{body}.{_b64(sig)}"


@pytest.fixture
def users(tmp_path) -> Path:
    path = tmp_path / "passwd"
    _passwd(path, "alice", "wonderland")
    _passwd(path, "bob", "builder")
    _passwd(path, "alice", "looking-glass")  # changed: the old password stops working
    return path


def test_passwd_writes_argon2_hashes_one_line_per_user(users):
    lines = users.read_text().splitlines()
    assert [l.split(":", 1)[0] for l in lines] == ["alice", "bob"]
    assert all(l.split(":", 1)[1].startswith("$argon2id$") for l in lines)
    assert oct(users.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_password_file_and_no_anonymous(broker_factory, client_factory, users, version):
    broker = broker_factory(config=f"""
[auth]
allow_anonymous = false
password_file = "{users}"
""")
    ok = client_factory(version=version, on=broker, connect=False)
    ok.paho.username_pw_set("alice", "looking-glass")
    ok.connect()
    # paho reports MQTT 3.1.1 return codes 4 and 5 as the MQTT 5 codes 0x86 and 0x87.
    bad, unauthorized = 0x86, 0x87
    for user, password, code in [("alice", "wonderland", bad), ("carol", "x", bad),
                                 ("bob", None, bad), (None, None, unauthorized)]:
        c = client_factory(version=version, on=broker, connect=False)
        if user is not None:
            c.paho.username_pw_set(user, password)
        c.connect(expect_rc=code)
    m = broker.metrics()
    assert m['fleetmq_auth_refused_total{reason="bad_credentials"}'] == 3
    assert m['fleetmq_auth_refused_total{reason="not_authorized"}'] == 1
    # A mosquitto client with the right password.
    pub = subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port),
                          "-u", "bob", "-P", "builder", "-t", "t", "-m", "x", "-q", "1"],
                         capture_output=True, text=True, timeout=10)
    assert pub.returncode == 0, pub.stderr


@pytest.fixture
def rsa_key(tmp_path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl") or pytest.fail("openssl missing", pytrace=False)
    private, public = tmp_path / "jwt.key", tmp_path / "jwt.pub"
    subprocess.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(private)], check=True, capture_output=True)
    subprocess.run([openssl, "pkey", "-in", str(private), "-pubout", "-out", str(public)],
                   check=True, capture_output=True)
    return private, public


def test_jwt_names_the_user_and_its_claim_limits_what_it_may_do(broker_factory, client_factory,
                                                                rsa_key):
    private, public = rsa_key
    broker = broker_factory(config=f"""
[auth]
allow_anonymous = false
[auth.jwt]
hs256_secret = "{SECRET}"
rs256_public_key_file = "{public}"
issuer = "fleet-auth"
""")
    later = int(time.time()) + 3600
    claims = {"sub": "dev-7", "iss": "fleet-auth", "exp": later,
              "acl": {"publish": ["devices/%u/#"], "subscribe": ["commands/%u/#"]}}
    watcher = client_factory(on=broker, connect=False)
    watcher.paho.username_pw_set("ops", _hs256({"sub": "ops", "iss": "fleet-auth", "exp": later}))
    watcher.connect()
    watcher.subscribe("devices/#", qos=1)

    for token in (_hs256(claims), _rs256(claims, private)):
        dev = client_factory(on=broker, connect=False)
        dev.paho.username_pw_set("", token)  # paho sends the (empty) user name too
        dev.connect()
        assert dev.publish("devices/dev-7/temp", b"21.5", qos=1) == 0
        assert watcher.recv().topic == "devices/dev-7/temp"
        assert dev.publish("devices/dev-8/temp", b"spoof", qos=1) == 0x87
        assert dev.subscribe(["commands/dev-7/#", "commands/#"], qos=1, check=False) == [1, 0x87]
        watcher.expect_nothing(within=0.3, what="a refused publish")
        dev.disconnect()

    for bad in (_hs256({**claims, "exp": int(time.time()) - 3600}),
                _hs256({**claims, "iss": "someone-else"}),
                _hs256(claims)[:-4] + "AAAA"):
        c = client_factory(on=broker, connect=False)
        c.paho.username_pw_set("dev-7", bad)
        c.connect(expect_rc=0x86)
    assert broker.metrics()['fleetmq_acl_denied_total{action="publish"}'] == 2


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_acl_rules_with_user_and_client_id_placeholders(broker_factory, client_factory, users,
                                                        version):
    broker = broker_factory(config=f"""
[auth]
password_file = "{users}"

[acl]
no_match = "deny"
[[acl.rules]]
permission = "allow"
action = "all"
topic = "#"
username = "bob"
[[acl.rules]]
permission = "deny"
action = "publish"
topic = "devices/%u/config"
[[acl.rules]]
permission = "allow"
action = "publish"
topic = "devices/%u/#"
[[acl.rules]]
permission = "allow"
action = "subscribe"
topic = "commands/%c/#"
""")
    bob = client_factory(version=version, on=broker, connect=False)
    bob.paho.username_pw_set("bob", "builder")
    bob.connect()
    bob.subscribe("devices/#", qos=1)

    alice = client_factory(version=version, on=broker, connect=False, client_id="alice-phone")
    alice.paho.username_pw_set("alice", "looking-glass")
    alice.connect()
    refused = 0x87 if version == V5 else 0x80
    assert alice.subscribe(["commands/alice-phone/#", "commands/+/#", "devices/#"], qos=1,
                           check=False) == [1, refused, refused]
    alice.publish("devices/alice/temp", b"ok", qos=1)
    assert (bob.recv().topic, ) == ("devices/alice/temp", )
    # Refused: another user's topic, and a topic a deny rule names before the allow.
    codes = [alice.publish("devices/bob/temp", b"no", qos=1),
             alice.publish("devices/alice/config", b"no", qos=1)]
    if version == V5:
        assert codes == [0x87, 0x87]
    bob.expect_nothing(within=0.5, what="refused publishes")
    # Commands reach alice's client id.
    bob.publish("commands/alice-phone/reboot", b"now", qos=1)
    assert alice.recv().topic == "commands/alice-phone/reboot"

    # An anonymous client is let in (allow_anonymous defaults to true) but has no user
    # name, so no %u rule is for it.
    anon = client_factory(version=version, on=broker)
    anon.publish("devices//temp", b"no", qos=1)
    bob.expect_nothing(within=0.5, what="an anonymous publish to a %u topic")

    # A will whose topic the rules refuse refuses the CONNECT.
    willing = client_factory(version=version, on=broker, connect=False)
    willing.paho.username_pw_set("alice", "looking-glass")
    willing.will("devices/bob/status", b"gone")
    willing.connect(expect_rc=0x87)
    m = broker.metrics()
    assert m['fleetmq_acl_denied_total{action="publish"}'] == 3
    assert m['fleetmq_acl_denied_total{action="subscribe"}'] == 2


def _ctl(broker, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([str(broker_binary()), "ctl", "--admin",
                          f"{broker.host}:{broker.admin_port}", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"ctl {args}: {out.stderr}"
    return out


def test_rules_set_at_runtime_apply_to_connected_clients_and_survive_a_restart(
        broker_factory, client_factory, tmp_path):
    node = broker_factory(config={"acl": {"no_match": "allow"}})
    c = client_factory(version=V5, client_id="rt-1", on=node)
    assert c.subscribe("closed/a", qos=1, check=False) == [1]
    assert c.publish("closed/a", "before", qos=1) == 0

    rules = tmp_path / "rules.toml"
    rules.write_text('[acl]\nno_match = "deny"\n'
                     '[[acl.rules]]\npermission = "allow"\naction = "all"\ntopic = "open/%c/#"\n')
    shown = json.loads(_ctl(node, "acl", "set", str(rules), "--output", "json").stdout)
    assert shown["source"] == "cluster" and shown["no_match"] == "deny"

    # The connection made before the change follows it at once.
    assert c.subscribe("closed/b", qos=1, check=False) == [0x87]
    assert c.publish("closed/a", "after", qos=1) == 0x87
    assert c.subscribe("open/rt-1/x", qos=1, check=False) == [1]
    assert c.publish("open/rt-1/x", "mine", qos=1) == 0

    # Kept in the replicated store: a restart does not fall back to the file.
    node.restart()
    text = _ctl(node, "acl", "show").stdout
    assert "from the cluster" in text and "open/%c/#" in text
    again = client_factory(version=V5, client_id="rt-2", on=node)
    assert again.subscribe("closed/c", qos=1, check=False) == [0x87]

    shown = json.loads(_ctl(node, "acl", "clear", "--output", "json").stdout)
    assert (shown["source"], shown["no_match"], shown["rules"]) == ("file", "allow", [])
    assert again.subscribe("closed/c", qos=1, check=False) == [1]


def test_password_file_reloads_on_sighup_and_through_ctl(broker_factory, client_factory, users):
    node = broker_factory(config=f'[auth]\nallow_anonymous = false\npassword_file = "{users}"\n')

    def connect(user: str, password: str, expect: int):
        c = client_factory(version=V5, on=node, connect=False)
        c.paho.username_pw_set(user, password)
        c.connect(expect_rc=expect)
        return c

    stays = connect("alice", "looking-glass", 0)
    _passwd(users, "carol", "new-user")
    connect("carol", "new-user", 0x86)          # not read yet
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "password file reloaded" not in node.log_tail():
        assert time.monotonic() < deadline, "no reload after SIGHUP"
        time.sleep(0.05)
    connect("carol", "new-user", 0)

    _passwd(users, "dave", "another")
    out = _ctl(node, "auth", "reload")
    assert "password file reloaded: 4 users" in out.stdout
    connect("dave", "another", 0)

    # A broken file is refused and the users stay as they were.
    users.write_text(users.read_text() + "not a line of this file\n")
    broken = subprocess.run([str(broker_binary()), "ctl", "--admin",
                             f"{node.host}:{node.admin_port}", "auth", "reload"],
                            capture_output=True, text=True, timeout=30)
    assert broken.returncode != 0 and "not username:hash" in broken.stderr
    connect("dave", "another", 0)
    assert stays.paho.is_connected(), "reloading does not touch connected clients"
