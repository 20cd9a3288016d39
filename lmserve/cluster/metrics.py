"""The cluster's Prometheus metrics (prefix `lmserve_cluster:`): replicas per deployment by state, the
autoscaler's target, and its scaling decisions. Registered in the router's registry, so the ingress's
/metrics shows them next to the per-request metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from lmserve.cluster.status import DeploymentReplicas

PREFIX = "lmserve_cluster:"
LABELS = ["application", "deployment"]


class ClusterMetrics:
    """Updated from periodic snapshots (`observe`). A scaling decision is a change of a deployment's target
    between two snapshots: changes undone within one poll interval go unseen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = Gauge(
            PREFIX + "replicas", "Replicas of a deployment, by state (RUNNING, STARTING, STOPPING, ...).",
            [*LABELS, "state"], registry=registry,
        )
        self.target_replicas = Gauge(
            PREFIX + "target_replicas", "The replicas the autoscaler wants for a deployment.", LABELS, registry=registry
        )
        self.scaling_decisions = Counter(
            PREFIX + "scaling_decisions", "Changes of a deployment's target replica count, up or down.",
            [*LABELS, "direction"], registry=registry,
        )
        self._targets: dict[tuple[str, str], int] = {}
        self._states: set[tuple[str, str, str]] = set()

    def observe(self, deployments: list[DeploymentReplicas]) -> None:
        states = set()
        for deployment in deployments:
            labels = (deployment.application, deployment.deployment)
            previous = self._targets.get(labels)
            if previous is not None and deployment.target_replicas != previous:
                direction = "up" if deployment.target_replicas > previous else "down"
                self.scaling_decisions.labels(*labels, direction).inc()
            self._targets[labels] = deployment.target_replicas
            self.target_replicas.labels(*labels).set(deployment.target_replicas)
            for state, count in deployment.replica_states.items():
                self.replicas.labels(*labels, state).set(count)
                states.add((*labels, state))
        for gone in self._states - states:  # no replica in that state any more
            self.replicas.labels(*gone).set(0)
        self._states |= states
