"""`python -m evalbus.cli`, the same as the `evalbus` console script."""

from evalbus.cli import main

main()
