"""docs/secure-cluster.md, followed as a new user would: every ```sh block of the page,
in order, in one bash script (`set -euo pipefail`) in an empty directory, with the
fleetmq binary under test first on PATH; the output must say what the page says it
says. (The page's ```bash block, building and installing, is what the test setup
already did.) Real openssl, curl, mosquitto_pub/mosquitto_sub, three real nodes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from fleetmq_testlib import broker_binary

PAGE = Path(__file__).resolve().parents[2] / "docs" / "secure-cluster.md"
# The page uses fixed ports, as a reader would.
PORTS = [7071, 7072, 7073, 8081, 8082, 8083, 8881, 8882, 8883]


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.S | re.M)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the nodes bind (tokio sets SO_REUSEADDR): connections of an earlier run
        # lingering in TIME_WAIT do not make a port taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_secure_cluster_page_works_as_written(tmp_path):
    blocks = _sh_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == 8, f"the page has {len(blocks)} sh blocks; the test expects 8"
    taken = [p for p in PORTS if not _port_free(p)]
    if taken:
        pytest.fail(f"ports the page uses are taken on this machine: {taken}", pytrace=False)

    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETMQ_")}
    env["PATH"] = f"{broker_binary().parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    try:
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    finally:
        # Whatever happened, no node of the page outlives the test.
        for pid_file in tmp_path.glob("node-*.pid"):
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(tmp_path.glob("node-*.log")))
    assert out.returncode == 0, f"the page's commands failed:\n{out.stdout}\n{logs}"
    text = out.stdout
    for node in (1, 2, 3):
        assert f"node-{node}.toml: ok" in text
    for expected in ("leader:", "sensors/alice/temp 21.5", "Connection Refused: bad user name or password",
                     'fleetmq_auth_refused_total{reason="bad_credentials"} 1',
                     'fleetmq_acl_denied_total{action="publish"} 1',
                     "node 2 is draining", "sensors/alice/temp 22.0"):
        assert expected in text, f"{expected!r} not in the output:\n{text}\n{logs}"
