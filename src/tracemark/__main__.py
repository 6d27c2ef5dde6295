"""``python -m tracemark``: the command line, as the ``tracemark`` script runs it."""

from .console import main

main()
