"""`python -m lmserve.bench serve ...`."""

from lmserve.bench.cli import main

main()
