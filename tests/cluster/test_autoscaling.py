"""Sustained load scales the model's deployment up to at least two replicas, and back to one when it stops;
no request fails meanwhile, every greedy answer equals a single `lmserve serve`'s, and the ingress's metrics
show the replica counts and the scaling decisions."""

from __future__ import annotations

import time
from collections.abc import Callable

from lmserve.cluster.status import DeploymentReplicas
from tests.cluster.conftest import Cluster
from tests.cluster.load import MODEL, PROMPTS, Load, complete

CLIENTS = 4  # requests in flight at once: four times the target of one per replica


def scaled_down(replicas: DeploymentReplicas) -> bool:
    return replicas.target_replicas == 1 and replicas.replica_states == {"RUNNING": 1}


def eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Whether `condition` holds within `timeout` seconds (the ingress polls Ray Serve every second)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_load_scales_the_model_up_and_back_down_without_failing_a_request(
    cluster: Cluster, reference_outputs: dict[str, str]
) -> None:
    assert cluster.model_replicas().running == 1

    load = Load(cluster.url, CLIENTS)
    try:
        cluster.wait_for(lambda replicas: replicas.running >= 2, timeout=120)
        assert cluster.metric("lmserve_cluster:scaling_decisions_total", deployment=MODEL, direction="up") >= 1
    finally:
        answers = load.stop()

    # One request at a time while the extra replicas go: nothing fails during scale-down either.
    deadline = time.monotonic() + 90
    while not scaled_down(replicas := cluster.model_replicas()):
        assert time.monotonic() < deadline, replicas.describe()
        answers.append(complete(cluster.url, PROMPTS[len(answers) % len(PROMPTS)], stream=False))

    failures = [answer for answer in answers if answer.error is not None]
    assert not failures, failures[:3]
    assert len(answers) > CLIENTS
    for answer in answers:
        assert answer.text == reference_outputs[answer.prompt], answer
    assert replicas.replica_states == {"RUNNING": 1}
    assert eventually(lambda: cluster.metric("lmserve_cluster:replicas", deployment=MODEL, state="RUNNING") == 1)
    assert cluster.metric("lmserve_cluster:scaling_decisions_total", deployment=MODEL, direction="down") >= 1
    assert cluster.metric("lmserve_router:requests_total", model=MODEL, status="200") >= len(answers)
