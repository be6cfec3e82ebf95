"""`python -m sweep`: the `sweep` command line."""

from sweep.cli import run

run()
