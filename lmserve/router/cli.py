"""`lmserve router`'s command line: a YAML file (`--config`) or one model's replicas (`--backends`), and a
flag for each field of RouterConfig and ReplicaGroupConfig."""

from __future__ import annotations

import argparse

from lmserve.entrypoints.cli_args import add_dataclass_arguments, pick
from lmserve.errors import ConfigError
from lmserve.router.config import ReplicaGroupConfig, RouterConfig, config_from_backends, load_config

DESCRIPTION = "An OpenAI-compatible load balancer in front of `lmserve serve` replicas of one or more models."


def add_router_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `router` subcommand; its handler is `args.handler(args)`."""
    parser = subparsers.add_parser("router", help="route requests to lmserve replicas", description=DESCRIPTION)
    add_router_arguments(parser)


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a YAML file: router options, and each model's backends (docs/router.md)")
    source.add_argument("--backends", help="one model's replicas as comma-separated URLs: http://h1:8000,http://h2:8000")
    parser.set_defaults(
        handler=run_router_command,
        router_options=add_dataclass_arguments(parser, RouterConfig, skip={"groups", "routes"}),
        group_options=add_dataclass_arguments(parser, ReplicaGroupConfig, skip={"backends"}),
    )


def build_config(args: argparse.Namespace) -> RouterConfig:
    """The config the flags describe; router flags also override a config file's values."""
    router_options = pick(args, args.router_options)
    group_options = pick(args, args.group_options)
    if args.config is None:
        return config_from_backends(args.backends, **group_options, **router_options)
    if group_options:
        flags = ", ".join("--" + name.replace("_", "-") for name in group_options)
        raise ConfigError(f"{flags}: with --config, set these per model in the config file")
    return load_config(args.config, **router_options)


def run_router_command(args: argparse.Namespace) -> None:
    from lmserve.router.serve import run_router

    run_router(build_config(args))
