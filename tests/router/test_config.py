"""The router's configuration: a YAML file, or --backends for one model, and the command line over both."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lmserve.errors import ConfigError
from lmserve.router.cli import add_router_parser, build_config
from lmserve.router.config import ReplicaGroupConfig, RouterConfig, config_from_backends, load_config

EXAMPLE = """
port: 9000
max_outstanding_per_backend: 16
max_queue_size: 100
health_interval: 0.5
models:
  qwen3-8b:
    backends: [http://gpu1:8000, http://gpu2:8000/]
    policy: prefix_aware
    max_load_imbalance: 1.5
  default_model:
    backends:
      - http://cpu1:8000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmserve")
    add_router_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["router", *argv])


def test_a_yaml_file_gives_router_options_and_one_group_per_model(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert (config.port, config.max_outstanding_per_backend, config.max_queue_size) == (9000, 16, 100)
    assert config.health_interval == 0.5
    assert config.max_queue_wait == RouterConfig.max_queue_wait  # unset: the default
    qwen, default = config.groups
    assert qwen == ReplicaGroupConfig(
        "qwen3-8b", ["http://gpu1:8000", "http://gpu2:8000"], "prefix_aware", max_load_imbalance=1.5
    )
    assert (default.model, default.backends, default.policy) == ("default_model", ["http://cpu1:8000"],
                                                                  "least_outstanding")


def test_backends_make_one_unnamed_group_and_options_go_where_they_belong() -> None:
    config = config_from_backends(" http://h1:8000, http://h2:8000/ ,", policy="round_robin", max_retries=5)
    (group,) = config.groups
    assert group == ReplicaGroupConfig(None, ["http://h1:8000", "http://h2:8000"], "round_robin")
    assert config.max_retries == 5


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models: {m: {backends: [http://a:1]}}\nmax_queue_siz: 3", ["unknown", "max_queue_siz"]),
        ("models: {m: {backends: [http://a:1], policy: random}}", ["policy", "random", "round_robin"]),
        ("models: {m: {backends: []}}", ["'m'", "at least one backend"]),
        ("models: {m: {backends: [a:1]}}", ["http://", "'a:1'"]),
        ("models: {m: {backends: [http://a:1, http://a:1/]}}", ["twice"]),
        ("models: {m: {backends: [http://a:1]}}\nmax_outstanding_per_backend: 0", ["max_outstanding_per_backend"]),
        ("models: {m: {backends: [http://a:1]}}\nmax_queue_wait: -1", ["max_queue_wait", "positive"]),
        ("port: 1", ["models"]),
        ("- a list", ["mapping"]),
        ("models: [", ["cannot read"]),
    ],
)
def test_a_bad_config_file_says_what_is_wrong(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    for word in words:
        assert word in str(error.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_an_unnamed_group_must_be_the_only_one() -> None:
    groups = [ReplicaGroupConfig(None, ["http://a:1"]), ReplicaGroupConfig("m", ["http://b:1"])]
    with pytest.raises(ConfigError, match="each needs its name"):
        RouterConfig(groups=groups)


def test_the_command_line_builds_the_config_from_backends() -> None:
    args = parse("--backends", "http://h1:8000,http://h2:8000", "--policy", "prefix_aware", "--prefix-chars", "64",
                 "--model", "default_model", "--port", "9001", "--max-queue-wait", "2.5")
    config = build_config(args)
    assert args.handler.__name__ == "run_router_command"
    assert (config.port, config.max_queue_wait) == (9001, 2.5)
    assert config.groups == [ReplicaGroupConfig("default_model", ["http://h1:8000", "http://h2:8000"],
                                                "prefix_aware", prefix_chars=64)]


def test_router_flags_override_the_config_file_but_group_flags_are_refused(tmp_path: Path) -> None:
    path = str(write(tmp_path, EXAMPLE))
    assert build_config(parse("--config", path, "--port", "9100")).port == 9100
    with pytest.raises(ConfigError, match="--policy"):
        build_config(parse("--config", path, "--policy", "round_robin"))


def test_the_command_line_needs_config_or_backends_but_not_both() -> None:
    with pytest.raises(SystemExit):
        parse("--port", "1")
    with pytest.raises(SystemExit):
        parse("--config", "a.yaml", "--backends", "http://a:1")


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    """docs/router.md's example config is valid as it is written."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "router.md"
    example = docs.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, example))
    assert len(config.groups) >= 2
