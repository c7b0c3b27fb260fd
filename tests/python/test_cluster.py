"""A three-node cluster driven by paho-mqtt: a persistent session survives SIGKILL of
the node that holds it (ARCHITECTURE.md, "The promise").

The nodes are started together with `--peers` naming all three; each must answer
`GET /readyz` with 200 and they must agree on a leader (`fleetmq ctl status`) before
the test runs.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from fleetmq_testlib import (V311, V5, BrokerError, Cluster, broker_binary, publish_within)


@pytest.fixture
def cluster(request, tmp_path) -> Cluster:
    binary = broker_binary()
    if not binary.exists():
        pytest.fail(f"fleetmq binary not found at {binary}: build it with `cargo build -p "
                    f"fleetmq` or point FLEETMQ_BIN at it.", pytrace=False)
    c = Cluster(binary, tmp_path / "cluster")
    # conftest.py attaches these nodes' logs to a failing test's report.
    request.node._fleetmq_brokers = list(c.nodes)
    try:
        c.start()
    except BrokerError as e:
        c.stop()
        pytest.fail(str(e), pytrace=False)
    yield c
    c.stop()


def _payloads(messages, prefix: str) -> list[str]:
    return [m.payload.decode() for m in messages if m.payload.decode().startswith(prefix)]


def _first_arrivals(payloads: list[str]) -> list[str]:
    seen: list[str] = []
    for p in payloads:
        if p not in seen:
            seen.append(p)
    return seen


def test_persistent_session_survives_sigkill_of_its_node(cluster, client_factory):
    uid = f"{os.getpid()}-{time.monotonic_ns()}"
    topic = f"pycluster/{uid}"
    sub_id = f"pycluster-sub-{uid}"
    n1, n2, n3 = cluster.node(1), cluster.node(2), cluster.node(3)

    sub = client_factory(version=V311, client_id=sub_id, clean=False, on=n2)
    assert sub.connack.session_present is False
    sub.subscribe(f"{topic}/#", qos=1)
    pub = client_factory(version=V311, on=n1)

    # The subscription made on node 2 must be known on node 1 before counting: QoS 1
    # probes from node 1 until one arrives (a SUBACK does not say when other nodes
    # apply it).
    deadline = time.monotonic() + 20
    k = 0
    while True:
        pub.publish(f"{topic}/probe", f"probe-{k}", qos=1)
        k += 1
        if _payloads(sub.drain(0.3), "probe-"):
            break
        assert time.monotonic() < deadline, (
            f"a subscriber on node 2 got nothing published on node 1 within 20 s\n"
            f"{cluster.log_tails()}")

    before = [f"before-{i}" for i in range(10)]
    for p in before:
        pub.publish(f"{topic}/data", p, qos=1)
    got = []
    deadline = time.monotonic() + 15
    while not set(before) <= set(got) and time.monotonic() < deadline:
        got += _payloads(sub.drain(0.5), "before-")
    assert _first_arrivals(got) == before, (
        f"published on node 1, received on node 2: {got}")

    # SIGKILL the subscriber's node. The publisher, on node 1, goes on: every PUBLISH
    # it gets a PUBACK for must reach the subscriber (the first may wait for a new
    # leader when node 2 led).
    cluster.kill(2)
    sub.close()
    away = [f"away-{i}" for i in range(10)]
    for i, p in enumerate(away):
        assert publish_within(pub, f"{topic}/data", p, 1, 30 if i == 0 else 10), (
            f"node 1 did not acknowledge {p} (QoS 1 for a persistent session) with node 2 "
            f"down\n{cluster.log_tails()}")

    # The subscriber comes back on node 3 with the same client id and clean_session=0.
    deadline = time.monotonic() + 30
    attempts = []
    while True:
        back = client_factory(version=V311, client_id=sub_id, clean=False, on=n3,
                              connect=False)
        try:
            connack = back.connect(expect_rc=None)
            if connack.reason_code == 0:
                break
            attempts.append(f"CONNACK {connack.reason_code:#04x}")
        except AssertionError as e:  # no CONNACK in time
            attempts.append(str(e))
        back.close()
        assert time.monotonic() < deadline, (
            f"could not reconnect to node 3: {attempts}\n{cluster.log_tails()}")
        time.sleep(0.5)
    assert connack.session_present is True, (
        f"the persistent session of node 2 must be resumable on node 3 (session_present=1); "
        f"earlier attempts: {attempts}\n{cluster.log_tails()}")

    got = []
    deadline = time.monotonic() + 20
    while not set(away) <= set(got) and time.monotonic() < deadline:
        got += _payloads(back.drain(0.5), "away-")
    missing = [p for p in away if p not in got]
    assert not missing, (
        f"acknowledged while the subscriber's node was down, never delivered on node 3: "
        f"{missing} (received {got})\n{cluster.log_tails()}")
    assert _first_arrivals(got) == away, f"out of order: {got}"

    # The subscription came along: a new message reaches it on node 3.
    pub.publish(f"{topic}/data", "after", qos=1)
    deadline = time.monotonic() + 10
    after = []
    while not after and time.monotonic() < deadline:
        after = _payloads(back.drain(0.5), "after")
    assert after == ["after"], f"the subscription did not survive: {after}"


def test_the_cluster_metrics_agree_and_settle(cluster, client_factory):
    """The Raft and forwarding figures in /metrics, by value: every node names the same
    term and leader, commits and applies what the group wrote, and a clean subscriber on
    node 2 counts what node 1 forwarded to it."""
    n1, n2 = cluster.node(1), cluster.node(2)
    topic = f"pymetrics/{os.getpid()}-{time.monotonic_ns()}"
    sub = client_factory(version=V311, on=n2)
    sub.subscribe(topic, qos=0)
    pub = client_factory(version=V311, on=n1)
    deadline = time.monotonic() + 20
    while not sub.drain(0.3):
        pub.publish(topic, "probe", qos=1)
        assert time.monotonic() < deadline, "node 1's PUBLISH never reached node 2"
    forwarded_out = n1.metrics()["fleetmq_forwarded_out_total"]
    forwarded_in = n2.metrics()["fleetmq_forwarded_in_total"]
    assert forwarded_out >= 1 and forwarded_in >= 1, (forwarded_out, forwarded_in)
    for i in range(5):
        pub.publish(topic, f"m{i}", qos=1)
    assert len(sub.drain(1.0)) == 5
    assert n1.metrics()["fleetmq_forwarded_out_total"] >= forwarded_out + 5
    assert n2.metrics()["fleetmq_forwarded_in_total"] >= forwarded_in + 5

    # At rest, every node has committed and applied its whole log and agrees with the
    # others on the term and the leader.
    deadline = time.monotonic() + 15
    while True:
        ms = {node.node_id: node.metrics() for node in cluster.nodes}
        settled = all(
            m["fleetmq_raft_commit_lag_entries"] == 0
            and m["fleetmq_raft_apply_lag_entries"] == 0
            and m["fleetmq_raft_committed_index"] == m["fleetmq_raft_last_applied_index"]
            for m in ms.values())
        # Read one node after another: a write in between (the leader's sweep) is
        # seen by some only, so equal indexes are part of being settled.
        settled = settled and len({m["fleetmq_raft_committed_index"] for m in ms.values()}) == 1
        if settled:
            break
        assert time.monotonic() < deadline, f"not settled: {ms}"
        time.sleep(0.2)
    terms = {m["fleetmq_raft_term"] for m in ms.values()}
    leaders = {m["fleetmq_raft_leader_id"] for m in ms.values()}
    assert len(terms) == 1 and len(leaders) == 1, (terms, leaders)
    leader = int(leaders.pop())
    assert sum(m["fleetmq_raft_is_leader"] for m in ms.values()) == 1
    assert ms[leader]["fleetmq_raft_is_leader"] == 1
    committed = {m["fleetmq_raft_committed_index"] for m in ms.values()}
    assert len(committed) == 1 and committed.pop() > 0, ms
    lags = {k: v for k, v in ms[leader].items()
            if k.startswith("fleetmq_raft_follower_lag_entries")}
    assert len(lags) == 2 and set(lags.values()) == {0}, lags


def test_ctl_kicks_a_client_connected_to_another_node(cluster, client_factory):
    """`fleetmq ctl clients kick` asked of node 1 closes a client connected to node 3
    (DISCONNECT 0x98) and keeps its session, as an operator behind a load balancer needs:
    they cannot choose which node they ask."""
    n1, n3 = cluster.node(1), cluster.node(3)
    cid = f"kick-far-{os.getpid()}-{time.monotonic_ns()}"
    c = client_factory(version=V5, client_id=cid, clean=False, on=n3,
                       SessionExpiryInterval=600)
    cmd = [str(broker_binary()), "ctl", "--admin", f"{n1.host}:{n1.admin_port}",
           "clients", "kick", cid]
    # Node 1 learns where the client is from the replicated registry: ask until it has.
    deadline = time.monotonic() + 15
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if out.returncode == 0:
            break
        assert time.monotonic() < deadline, f"kick through node 1 failed: {out.stderr}"
        time.sleep(0.2)
    assert c.wait_disconnected().reason_code == 0x98
    back = client_factory(version=V5, client_id=cid, clean=False, on=n3, connect=False)
    assert back.connect(SessionExpiryInterval=600).session_present
    # Nobody by that id anywhere: refused, saying so.
    out = subprocess.run(cmd[:-1] + ["nobody-here"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode != 0 and "not connected" in out.stderr, out.stderr
