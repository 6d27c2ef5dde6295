"""The one exception type for problems a user can cause and fix.

The CLI prints these messages without a traceback and exits non-zero, so every
message should say what went wrong *and* what to do about it.
"""


class TracemarkError(Exception):
    """A user-facing error: bad input, bad file, bad model output, exhausted budget."""


class BudgetExceededError(TracemarkError):
    """An oracle was asked for more queries than its budget allows."""
