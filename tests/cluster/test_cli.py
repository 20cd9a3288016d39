"""`lmserve cluster status --address` from another process lists the running deployments and their replicas."""

from __future__ import annotations

import subprocess
import sys

import ray

from tests.cluster.conftest import Cluster
from tests.cluster.load import MODEL


def test_status_lists_each_deployment_and_its_replicas(cluster: Cluster) -> None:
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "lmserve.entrypoints.cli", "cluster", "status", "--address", address]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{MODEL}/{MODEL}: ") and "running" in line for line in lines), result.stdout
    assert any(line.startswith("lmserve/ingress: HEALTHY, target 1 (1 running)") for line in lines), result.stdout
