"""`python -m lmserve.router ...`: the same command as `lmserve router ...`."""

from __future__ import annotations

import argparse
import sys

from lmserve.errors import LmserveError
from lmserve.router.cli import DESCRIPTION, add_router_arguments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmserve.router", description=DESCRIPTION)
    add_router_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except LmserveError as error:
        print(f"lmserve router: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
