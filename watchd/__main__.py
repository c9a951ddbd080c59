"""`python -m watchd`: the command line."""

from watchd.cli import main

main()
