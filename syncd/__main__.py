"""Lets `python -m syncd` run the CLI."""

from syncd.cli.main import main

main()
