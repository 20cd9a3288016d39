"""The cluster config: YAML into dataclasses, Ray Serve's autoscaling options, the router config the ingress
runs, and clear errors for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmserve.cluster.config import load_cluster_config
from lmserve.cluster.ingress import build_router_config
from lmserve.errors import ConfigError

CONFIG = """
models:
  small:
    device: cpu
    engine: {dtype: float32, max_num_seqs: 8}
    max_ongoing_requests: 8
    autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2, upscale_delay_s: 5}
  large:
    device: cuda
  half:
    device: cuda
    num_gpus: 0.5
ingress:
  host: 0.0.0.0
  port: 9000
  router: {max_queue_size: 32}
  routes:
    auto: {simple: small, complex: large}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def test_a_config_file_becomes_deployments_and_the_ingress_router(tmp_path: Path) -> None:
    config = load_cluster_config(write(tmp_path, CONFIG))
    small, large, half = config.models
    assert (small.name, small.engine) == ("small", {"dtype": "float32", "max_num_seqs": 8})
    # One GPU per replica on the GPU unless the file says otherwise; CPU replicas take none.
    assert (small.num_gpus, large.num_gpus, half.num_gpus) == (0, 1, 0.5)
    assert small.autoscaling.ray_serve_options() == {
        "min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
        "upscale_delay_s": 5, "downscale_delay_s": 600.0,
    }
    router = build_router_config(config)
    assert [(group.model, group.backends) for group in router.groups] == [
        ("small", ["http://127.0.0.1:9000/_lmserve/models/small"]),
        ("large", ["http://127.0.0.1:9000/_lmserve/models/large"]),
        ("half", ["http://127.0.0.1:9000/_lmserve/models/half"]),
    ]
    assert router.max_queue_size == 32
    assert router.max_outstanding_per_backend == 4 * 8  # a model's backend stands for all its replicas
    assert [(route.name, route.simple, route.complex) for route in router.routes] == [("auto", "small", "large")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: {}", "`models` must map"),
        ("models: {m: {engine: {dtype: float32, colour: red}}}", "unknown engine option(s) colour"),
        ("models: {m: {autoscaling: {min_replicas: 2, max_replicas: 1}}}", "max_replicas must be at least 1"),
        ("models: {m: {replicas: 2}}", "unknown field(s) replicas"),
        ("models: {m: {}}\ningress: {router: {port: 1}}", "come from the cluster config"),
        ("models: {m: {}}\nworkers: 2", "unknown field(s) workers"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_cluster_config(write(tmp_path, text))
