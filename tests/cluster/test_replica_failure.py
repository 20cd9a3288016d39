"""A replica's process killed under load: Ray Serve starts another, and every request whose answer had not
started streaming succeeds (the ingress retries it before its first byte), with the single server's text."""

from __future__ import annotations

import os
import signal
import time

from tests.cluster.conftest import Cluster
from tests.cluster.load import Load

CLIENTS = 3


def test_a_killed_replica_is_replaced_and_requests_not_yet_streaming_succeed(
    cluster: Cluster, reference_outputs: dict[str, str]
) -> None:
    cluster.wait_for(lambda replicas: replicas.running >= 1 and replicas.status == "HEALTHY", timeout=60)
    load = Load(cluster.url, CLIENTS)
    try:
        time.sleep(3)  # requests in flight on every replica
        victim, pid = next(iter(cluster.running_replica_pids().items()))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while victim in (pids := cluster.running_replica_pids()) or not pids:
            assert time.monotonic() < deadline, f"no replica replaced {victim}: {pids}"
            time.sleep(0.5)
        time.sleep(3)  # and requests on the new replica
    finally:
        answers = load.stop()

    failed_before_streaming = [answer for answer in answers if answer.error and not answer.started_streaming]
    assert not failed_before_streaming, failed_before_streaming[:3]
    for answer in answers:
        if answer.error is None:
            assert answer.text == reference_outputs[answer.prompt], answer
    assert sum(answer.error is None for answer in answers) > CLIENTS
    assert cluster.model_replicas().running >= 1
