"""`lmserve cluster up|status|down`: deploy the models of a config file to a Ray cluster, show their replicas,
take them down."""

from __future__ import annotations

import argparse
import os
from types import ModuleType

from lmserve.cluster.config import load_cluster_config
from lmserve.errors import ConfigError

DESCRIPTION = "Serve models on a Ray cluster with Ray Serve: autoscaled replicas behind lmserve's router."
ADDRESS_HELP = "an existing Ray cluster's address (host:port of its head); default: a local cluster `up` starts"


def add_cluster_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cluster` subcommand and its own subcommands; their handler is `args.handler(args)`."""
    parser = subparsers.add_parser("cluster", help="serve models on a Ray cluster", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="cluster_command", required=True)

    up = commands.add_parser("up", help="deploy the configured models and the ingress, then return")
    up.add_argument("--config", required=True, help="a YAML file: each model's deployment and the ingress")
    up.set_defaults(handler=run_up)

    status = commands.add_parser("status", help="print each deployment's status and replicas")
    status.set_defaults(handler=run_status)

    down = commands.add_parser("down", help="delete the deployments (and stop a local cluster `up` started)")
    down.set_defaults(handler=run_down)

    for command in (up, status, down):
        command.add_argument("--address", help=ADDRESS_HELP)


def lifecycle_for(args: argparse.Namespace) -> ModuleType:
    """The lifecycle module, imported once Ray's authentication mode is chosen: Ray reads it at import.

    A local cluster (no --address) runs with token authentication, Ray's default for a new cluster; saying so
    explicitly makes this driver present the token that `ray start` keeps in ~/.ray. An existing cluster's
    mode is the user's to set (RAY_AUTH_MODE).
    """
    if args.address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        from lmserve.cluster import lifecycle
    except ModuleNotFoundError as error:
        if error.name != "ray" and not (error.name or "").startswith("ray."):
            raise
        raise ConfigError("`lmserve cluster` needs Ray Serve: pip install 'lmserve[cluster]'") from error
    return lifecycle


def run_up(args: argparse.Namespace) -> None:
    lifecycle = lifecycle_for(args)
    config = load_cluster_config(args.config)
    lifecycle.up(config, args.address)
    print(f"serving {', '.join(model.name for model in config.models)} on "
          f"http://{config.ingress.host}:{config.ingress.port}")


def run_status(args: argparse.Namespace) -> None:
    for deployment in lifecycle_for(args).status(args.address):
        print(deployment.describe())


def run_down(args: argparse.Namespace) -> None:
    lifecycle_for(args).down(args.address)
