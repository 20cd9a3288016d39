"""`lmserve cluster up` without --address starts a local Ray cluster that outlives the command; `status` and
`down` find it again, the ingress answers as a single `lmserve serve` does, and `down` stops exactly that
cluster's processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lmserve.cluster.lifecycle import LOCAL_RAY_PORT
from tests.cluster.load import MODEL, PROMPTS, complete
from tests.router.router_process import REPLICA_ENV
from tests.server.server_process import free_port


def cluster_command(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmserve.entrypoints.cli", "cluster", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """A temporary directory with a short path: Ray's socket paths under it must fit 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="lmlc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_starts_a_local_cluster_that_status_and_down_find(
    short_tmp_path: Path, reference_outputs: dict[str, str]
) -> None:
    tmp_path = short_tmp_path
    port = free_port()
    config = {
        "models": {MODEL: {"device": "cpu", "env": REPLICA_ENV, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}},
        "ingress": {"host": "127.0.0.1", "port": port},
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    # The local cluster's record and Ray's session files go to this test's own temporary directory.
    env = {**os.environ, "TMPDIR": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    record = tmp_path / "lmserve-local-ray-cluster.json"
    try:
        up = cluster_command("up", "--config", str(tmp_path / "cluster.yaml"), env=env, timeout=240)
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"serving {MODEL} on http://127.0.0.1:{port}" in up.stdout
        local = json.loads(record.read_text())
        assert local["address"] == f"127.0.0.1:{LOCAL_RAY_PORT}" and alive(local["pid"])

        status = cluster_command("status", env=env, timeout=60)
        assert status.returncode == 0, status.stderr[-3000:]
        assert f"{MODEL}/{MODEL}: HEALTHY, target 1 (1 running)" in status.stdout.splitlines()

        answer = complete(f"http://127.0.0.1:{port}", PROMPTS[0], stream=False)
        assert answer.text == reference_outputs[PROMPTS[0]], answer
    finally:
        down = cluster_command("down", env=env, timeout=120)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not record.exists() and not alive(local["pid"])
    missing = cluster_command("status", env=env, timeout=60)
    assert missing.returncode != 0 and "no local cluster started by `lmserve cluster up`" in missing.stderr
