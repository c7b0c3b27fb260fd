"""The deployment files, checked offline (no container runtime or Kubernetes cluster
here): the Helm chart renders with helm into exactly the committed plain manifests
(deploy/k8s), every manifest validates against the Kubernetes API schemas
(kubernetes-validate, which ships them), the chart's configuration is one a node
accepts (`fleetmq config check`), and docker-compose.yml's three nodes, Kafka,
Prometheus and Grafana fit together: peers, ports, mounted files, scrape targets, and
a dashboard that only asks for metrics a node exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fleetmq_testlib import broker_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "fleetmq"
RENDERED = ROOT / "deploy" / "k8s" / "fleetmq.yaml"
K8S_VERSION = "1.31"


def _helm() -> str:
    helm = shutil.which("helm") or str(Path.home() / "go" / "bin" / "helm")
    if not Path(helm).exists():
        pytest.fail("helm not found: run scripts/install-test-deps.sh (it builds helm from "
                    "the Go module proxy)", pytrace=False)
    return helm


def _render(*set_values: str) -> str:
    args = [_helm(), "template", "fleetmq", str(CHART), "--namespace", "fleetmq"]
    for value in set_values:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_the_committed_manifests_are_the_charts_rendering():
    committed = RENDERED.read_text()
    # Past the header comment that says how the file was made.
    body = committed[committed.index("---\n"):]
    assert body == _render(), (
        "deploy/k8s/fleetmq.yaml is stale: regenerate it with "
        "`helm template fleetmq deploy/helm/fleetmq --namespace fleetmq`, below its header")


@pytest.mark.parametrize("values", [
    (),
    ("tls.enabled=true", "websocket.enabled=true", "tls.requireClientCert=true",
     "service.proxyProtocol=true", "replicas=5", "adminApi.tokenSecret=fleetmq-api"),
], ids=["defaults", "tls-ws-proxy-5-nodes-token"])
def test_manifests_validate_against_the_kubernetes_schemas(values):
    from kubernetes_validate import validate
    docs = _docs(_render(*values))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "Service",
                     "StatefulSet"]
    for doc in docs:
        validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values", [
    (),
    ("tls.enabled=true", "websocket.enabled=true", "tls.cnAsUsername=true",
     "service.proxyProtocol=true"),
], ids=["defaults", "tls-ws-proxy"])
def test_the_charts_configuration_is_accepted_by_a_node(tmp_path, values):
    docs = _docs(_render(*values))
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["fleetmq.toml"]
    # The pod's FLEETMQ_MQTT_LISTEN sets mqtt.listen (variables override the file).
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "[mqtt]\n" in config
    config = config.replace("[mqtt]\n", f'[mqtt]\nlisten = "{env["FLEETMQ_MQTT_LISTEN"]}"\n', 1)
    # The TLS files a node would find in its Secret.
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tls / "tls.key"), "-out", str(tls / "tls.crt"),
                    "-subj", "/CN=fleetmq"], check=True, capture_output=True)
    shutil.copy(tls / "tls.crt", tls / "ca.crt")
    path = tmp_path / "fleetmq.toml"
    path.write_text(config.replace("/etc/fleetmq/tls", str(tls)))
    out = subprocess.run([str(broker_binary()), "config", "check", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr + "\n" + config


@pytest.mark.parametrize("with_token", [False, True], ids=["loopback", "token"])
def test_the_prestop_hook_drains_a_node_and_waits_for_its_exit(broker_factory, client_factory,
                                                               tmp_path, with_token):
    values = ("adminApi.tokenSecret=fleetmq-api",) if with_token else ()
    sts = next(d for d in _docs(_render(*values)) if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "fleetmq" and "--admin=127.0.0.1:8080" in command
    grace = pod["terminationGracePeriodSeconds"]
    assert f"--timeout={grace - 5}" in command, "the hook must end before the kubelet kills"
    env = {e["name"]: e.get("value") for e in container["env"]}
    config = None
    token_path = "/etc/fleetmq/api-token/token"
    if with_token:
        assert env["FLEETMQ_ADMIN_API_TOKEN_FILE"] == token_path
        assert f"--token-file={token_path}" in command
        token = tmp_path / "token"
        token.write_text("a-token-from-the-secret-0123\n")
        config = {"admin": {"api_token_file": str(token)}}
    node = broker_factory(config=config)
    c = client_factory(on=node)
    # The hook as the kubelet runs it in the pod, with this test node's address.
    hook = [str(broker_binary())] + [
        f"--admin=127.0.0.1:{node.admin_port}" if a == "--admin=127.0.0.1:8080"
        else a.replace(token_path, str(tmp_path / "token")) for a in command[1:]]
    out = subprocess.run(hook, capture_output=True, text=True, timeout=grace)
    assert out.returncode == 0, out.stderr
    assert "drained and stopped" in out.stdout
    assert c.wait_disconnected().reason_code == 0x8B
    assert node.proc.wait(timeout=5) == 0


@pytest.mark.parametrize("values", [(), ("tls.enabled=true", "websocket.enabled=true")],
                         ids=["defaults", "tls-ws"])
def test_only_the_nodes_reach_the_cluster_links(values):
    docs = _docs(_render(*values))
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    pods = sts["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pods.items(), "the policy must select the nodes' pods"
    named = {p["name"]: p["containerPort"] for p in
             sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
    open_ports, grpc_rule = policy["spec"]["ingress"]
    # Every port but the cluster links is open; each names a port the pods have.
    assert "from" not in open_ports
    assert sorted(p["port"] for p in open_ports["ports"]) == sorted(set(named) - {"grpc"})
    # The cluster links: from the nodes' own pods only.
    assert [p["port"] for p in grpc_rule["ports"]] == ["grpc"] and named["grpc"] == 7070
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": selector}}]
    assert "NetworkPolicy" not in {d["kind"] for d in _docs(_render(*values,
                                                                  "networkPolicy.enabled=false"))}


def test_peers_name_every_pod_through_the_headless_service():
    docs = _docs(_render("replicas=5"))
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    peers = env["FLEETMQ_PEERS"].split(",")
    assert peers == [f"{i + 1}=fleetmq-{i}.fleetmq-headless.fleetmq.svc.cluster.local:7070"
                     for i in range(5)]
    headless = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None")
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]


# --- docker-compose.yml -----------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_three_nodes_that_name_each_other(compose):
    services = compose["services"]
    assert {"fleetmq1", "fleetmq2", "fleetmq3", "kafka", "prometheus", "grafana"} <= set(services)
    host_ports = []
    for n in (1, 2, 3):
        node = services[f"fleetmq{n}"]
        env = node["environment"]
        assert env["FLEETMQ_NODE_ID"] == str(n)
        peers = dict(p.split("=") for p in env["FLEETMQ_PEERS"].split(","))
        assert peers == {str(i): f"fleetmq{i}:7070" for i in (1, 2, 3)}
        assert node["hostname"] == f"fleetmq{n}"
        assert node["build"] == "."
        host_ports += [p.split(":")[0] for p in node["ports"]]
        mounts = [v.split(":")[0] for v in node["volumes"]]
        for mount in mounts:
            if mount.startswith("./"):
                assert (ROOT / mount).is_file(), mount
        assert f"fleetmq{n}-data" in mounts and f"fleetmq{n}-data" in compose["volumes"]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_compose_configuration_is_accepted_by_a_node(compose, tmp_path):
    out = subprocess.run([str(broker_binary()), "config", "check",
                          str(ROOT / "deploy" / "docker" / "fleetmq.toml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = (ROOT / "deploy" / "docker" / "fleetmq.toml").read_text()
    kafka = compose["services"]["kafka"]["environment"]
    assert "INTERNAL://kafka:19092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert 'bootstrap_servers = "kafka:19092"' in text


def test_prometheus_scrapes_every_node_and_grafana_is_provisioned(compose):
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == [f"fleetmq{n}:8080" for n in (1, 2, 3)]
    grafana = compose["services"]["grafana"]
    for volume in grafana["volumes"]:
        assert (ROOT / volume.split(":")[0]).is_dir(), volume
    source = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_dashboard_asks_only_for_metrics_a_node_exports(broker_factory):
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "fleetmq.json").read_text())
    asked = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            asked |= set(re.findall(r"\bfleetmq_[a-z_]+", target["expr"]))
    assert len(asked) >= 20
    # A node with a bridge (to a Kafka that is not there) exports every family.
    broker = broker_factory(config="""
[kafka]
bootstrap_servers = "127.0.0.1:9"
[[kafka.egress]]
name = "telemetry"
mqtt_filter = "sensors/#"
kafka_topic = "telemetry"
[[kafka.ingress]]
name = "commands"
kafka_topics = ["commands"]
mqtt_topic = "commands/${key}"
""")
    status, body = broker.http_get("/metrics")
    assert status == 200
    exported = set(re.findall(r"^# TYPE (\S+)", body, re.M))
    assert not asked - exported, f"the dashboard asks for {sorted(asked - exported)}"
