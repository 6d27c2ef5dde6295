"""``python -m tracemark``: the command line, as the ``tracemark`` script runs it."""

from .cli import main

main()
