"""Deploying to a Ray cluster and taking down: `up` connects to a cluster (or starts a local one), starts
Ray Serve's HTTP proxy and deploys each model and the ingress; `down` deletes them (and stops a local cluster
that `up` started)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray import serve

from lmserve.cluster.config import ClusterConfig
from lmserve.cluster.deployment import build_model_application, model_route_prefix
from lmserve.cluster.ingress import INGRESS_APPLICATION, build_ingress_application
from lmserve.cluster.status import DeploymentReplicas, read_deployments
from lmserve.errors import ConfigError

# Written by `up` when it started the local cluster, so that `down` knows to stop it.
LOCAL_CLUSTER_FILE = Path(tempfile.gettempdir()) / "lmserve-local-ray-cluster.json"
LOCAL_CLUSTER_LOG = LOCAL_CLUSTER_FILE.with_suffix(".log")  # `ray start`'s output
LOCAL_RAY_PORT = 6380  # not Ray's default 6379: a local lmserve cluster should not take over another's port
LOCAL_START_TIMEOUT_S = 60.0
LOCAL_STOP_TIMEOUT_S = 30.0


def connect(address: str | None) -> None:
    """Connect this process to the Ray cluster at `address`, or to the local one `up` started (a process
    connected already, like a test's, stays on its cluster)."""
    if ray.is_initialized():
        return
    if address is None:
        address = _local_cluster()["address"]
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)


def up(config: ClusterConfig, address: str | None = None) -> None:
    """Deploy every model and the ingress; returns once all answer. Ray Serve keeps them running."""
    if address is None and not ray.is_initialized() and not LOCAL_CLUSTER_FILE.exists():
        start_local_cluster()
    connect(address)
    serve.start(http_options={"host": config.ingress.host, "port": config.ingress.port})
    for model in config.models:
        serve.run(build_model_application(model), name=model.name, route_prefix=model_route_prefix(model.name))
    serve.run(build_ingress_application(config), name=INGRESS_APPLICATION, route_prefix="/")


def status(address: str | None = None) -> list[DeploymentReplicas]:
    connect(address)
    return read_deployments()


def down(address: str | None = None) -> None:
    """Delete every Ray Serve application and the proxy; then stop the local cluster if `up` started it."""
    connect(address)
    serve.shutdown()
    if address is None:
        ray.shutdown()
        stop_local_cluster()


def start_local_cluster() -> None:
    """A single-node Ray cluster that outlives this process: `ray start --head --block` in a session of its own,
    whose address and process go to LOCAL_CLUSTER_FILE. Returns once a driver can connect."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={LOCAL_RAY_PORT}",
               "--include-dashboard=false", "--disable-usage-stats"]
    with LOCAL_CLUSTER_LOG.open("w") as log:
        process = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{LOCAL_RAY_PORT}"
    LOCAL_CLUSTER_FILE.write_text(json.dumps({"address": address, "pid": process.pid}))
    deadline = time.monotonic() + LOCAL_START_TIMEOUT_S
    while not _answers(address):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_local_cluster()
            raise ConfigError(f"could not start a local Ray cluster on port {LOCAL_RAY_PORT} "
                              f"(`ray start --head` exited with {process.poll()}); its output: {LOCAL_CLUSTER_LOG}")
        time.sleep(0.5)


def stop_local_cluster() -> None:
    """Stop the cluster `start_local_cluster` started (its whole process group), and nothing else."""
    pid = _local_cluster()["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # `ray start --block` stops its processes on an interrupt
        deadline = time.monotonic() + LOCAL_STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            os.killpg(pid, 0)  # raises ProcessLookupError once the group is gone
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    LOCAL_CLUSTER_FILE.unlink(missing_ok=True)


def _local_cluster() -> dict:
    if not LOCAL_CLUSTER_FILE.exists():
        raise ConfigError("no --address given, and no local cluster started by `lmserve cluster up` is running")
    return json.loads(LOCAL_CLUSTER_FILE.read_text())


def _answers(address: str) -> bool:
    """Whether the cluster's head takes connections: its GCS port is open."""
    host, port = address.rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        return True
    return False
