"""`python -m lmserve.bench serve ...`: the same command as `lmserve bench serve ...`."""

import sys

from lmserve.entrypoints.cli import main

main(["bench", *sys.argv[1:]])
