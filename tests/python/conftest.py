"""Fixtures for the FleetMQ Python integration tests.

Every test gets its own `fleetmq` process (fresh data directory, free loopback ports),
killed at teardown; a failing test's report carries that broker's log.

In CI (CI=true) a skipped test, or a skipped module, is reported as a failure: the suite
never passes by not running something.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetmq_testlib import Broker, BrokerError, Client, V5, VERSIONS, broker_binary


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


# --- skips are failures in CI -----------------------------------------------------------
def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and _in_ci() and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = (f"test was skipped while CI=true, and skips fail the run in CI: "
                        f"{_skip_reason(rep.longrepr)}")
    if rep.failed:
        for broker in getattr(item, "_fleetmq_brokers", []):
            rep.sections.append((f"fleetmq log: {broker.name} ({broker.log_path})",
                                 broker.log_tail()))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and _in_ci():
        rep.outcome = "failed"
        rep.longrepr = (f"collection of {collector.nodeid} was skipped while CI=true: "
                        f"{_skip_reason(rep.longrepr)}")


def pytest_report_header(config):
    binary = broker_binary()
    state = "found" if binary.exists() else "MISSING"
    return [f"fleetmq binary: {binary} ({state}); CI={'true' if _in_ci() else 'false'}"]


# --- brokers ----------------------------------------------------------------------------
@pytest.fixture
def broker_factory(request, tmp_path: Path):
    """Starts brokers: `broker_factory(config={"mqtt": {"sys_interval": 1}})`."""
    brokers: list[Broker] = []
    request.node._fleetmq_brokers = brokers

    def start(config: dict | str | None = None, name: str | None = None) -> Broker:
        binary = broker_binary()
        if not binary.exists():
            pytest.fail(
                f"fleetmq binary not found at {binary}: build it with `cargo build -p fleetmq` "
                f"(make test does) or point FLEETMQ_BIN at it.", pytrace=False)
        name = name or f"broker{len(brokers) + 1}"
        broker = Broker(binary, tmp_path / name, config=config, name=name)
        brokers.append(broker)
        try:
            broker.start()
        except BrokerError as e:
            pytest.fail(str(e), pytrace=False)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A broker with the default configuration."""
    return broker_factory()


# --- clients ----------------------------------------------------------------------------
@pytest.fixture
def client_factory(request):
    """`client_factory(version=V5, client_id=None, clean=True, keepalive=30, connect=True,
    on=None, manual_ack=False, **connect_properties)`: a connected Client on `on`, or on the default
    `broker` fixture (started on first use)."""
    clients: list[Client] = []

    def make(version: int = V5, client_id: str | None = None, clean: bool = True,
             keepalive: int = 30, connect: bool = True, on: Broker | None = None,
             manual_ack: bool = False, **connect_properties) -> Client:
        target = on if on is not None else request.getfixturevalue("broker")
        c = Client(target, version=version, client_id=client_id, clean=clean,
                   keepalive=keepalive, manual_ack=manual_ack)
        clients.append(c)
        if connect:
            c.connect(**connect_properties)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture(params=list(VERSIONS), ids=list(VERSIONS))
def version(request) -> int:
    """Runs a test once with MQTT 3.1.1 and once with MQTT 5."""
    return VERSIONS[request.param]
