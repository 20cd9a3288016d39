"""One real local Ray instance and one lmserve cluster on it for the whole test run: the embedded default model
with min 1 / max 3 CPU replicas and short autoscaling delays, behind the ingress. And the greedy outputs of a
single `lmserve serve`, which every answer through the cluster must equal."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import ray
from ray import serve

from lmserve.cluster import lifecycle
from lmserve.cluster.config import ClusterConfig, cluster_config_from_mapping
from lmserve.cluster.status import DeploymentReplicas, read_deployments
from tests.cluster.load import MODEL, PROMPTS, complete
from tests.router.router_process import REPLICA_ENV, metric_sum
from tests.server.server_process import ServerProcess, free_port

AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 1,
    "downscale_delay_s": 3,
}


@dataclass
class Cluster:
    """The deployed cluster: its config and the ingress's URL."""

    config: ClusterConfig
    url: str

    def model_replicas(self) -> DeploymentReplicas:
        return next(deployment for deployment in read_deployments() if deployment.deployment == MODEL)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the ingress's /metrics samples `name` with these labels (0 when there are none)."""
        return metric_sum(self.url, name, **labels)

    def running_replica_pids(self) -> dict[str, int]:
        """Each RUNNING replica of the model: its id and its process (a Ray worker of this test's Ray instance)."""
        from ray.serve.context import _get_global_client

        deployment = _get_global_client().get_serve_details()["applications"][MODEL]["deployments"][MODEL]
        return {replica["replica_id"]: replica["pid"] for replica in deployment["replicas"]
                if str(getattr(replica["state"], "value", replica["state"])) == "RUNNING"}

    def wait_for(self, condition: Callable[[DeploymentReplicas], bool], timeout: float) -> DeploymentReplicas:
        """Poll the model's deployment until `condition` holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            replicas = self.model_replicas()
            if condition(replicas):
                return replicas
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout}s: {replicas.describe()}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def reference_outputs() -> dict[str, str]:
    """Each prompt's greedy text from one `lmserve serve` of the embedded model, started before Ray and stopped."""
    with ServerProcess(None, env=REPLICA_ENV) as server:
        return {prompt: complete(server.url, prompt, stream=False).text for prompt in PROMPTS}


@pytest.fixture(scope="session")
def cluster(reference_outputs: dict[str, str]) -> Iterator[Cluster]:
    temp_dir = tempfile.mkdtemp(prefix="lmray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # Four logical CPUs on a two-core machine: three model replicas (one CPU each) and the ingress (none).
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             logging_level=logging.WARNING)
    config = cluster_config_from_mapping({
        "models": {MODEL: {"device": "cpu", "env": REPLICA_ENV, "max_ongoing_requests": 4, "autoscaling": AUTOSCALING}},
        "ingress": {"port": free_port(), "router": {"health_interval": 1.0}},
    })
    try:
        lifecycle.up(config)
        yield Cluster(config, f"http://127.0.0.1:{config.ingress.port}")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
