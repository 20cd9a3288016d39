"""`python -m lmserve.router ...`: the same command as `lmserve router ...`."""

import sys

from lmserve.entrypoints.cli import main

main(["router", *sys.argv[1:]])
