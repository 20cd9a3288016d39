"""What Ray Serve reports of each deployment: its status, target and replicas by state. Read by
`lmserve cluster status` and by the ingress's metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DeploymentReplicas:
    """One deployment as Ray Serve's controller sees it now."""

    application: str
    deployment: str
    status: str  # HEALTHY, UPSCALING, DOWNSCALING, UPDATING, UNHEALTHY, ...
    target_replicas: int  # what the autoscaler asks for
    replica_states: dict[str, int] = field(default_factory=dict)  # RUNNING, STARTING, STOPPING, ... -> count

    @property
    def running(self) -> int:
        return self.replica_states.get("RUNNING", 0)

    def describe(self) -> str:
        states = ", ".join(f"{count} {state.lower()}" for state, count in sorted(self.replica_states.items()))
        replicas = states or "no replicas"
        return f"{self.application}/{self.deployment}: {self.status}, target {self.target_replicas} ({replicas})"


def read_deployments() -> list[DeploymentReplicas]:
    """Every deployment of the connected Ray cluster. Blocks on the controller: call it off the event loop."""
    # serve.status() has the replica states but not the autoscaler's target; the controller's details have both.
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    found = []
    for app_name, application in sorted((details.get("applications") or {}).items()):
        for name, deployment in sorted((application.get("deployments") or {}).items()):
            states = Counter(_name(replica["state"]) for replica in deployment.get("replicas") or [])
            target = deployment["target_num_replicas"]
            found.append(DeploymentReplicas(app_name, name, _name(deployment["status"]), target, dict(states)))
    return found


def _name(state: object) -> str:
    """A state's name: the controller's details hold Ray's enums (str subclasses whose str() is "Class.NAME")."""
    return str(getattr(state, "value", state))
