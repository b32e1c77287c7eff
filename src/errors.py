"""The one exception type for bad input.

Every message is a single line that says what was wrong, where, and how to fix it; the
entry points print it without a traceback and exit non-zero.
"""


class KarnnaError(Exception):
    """Bad input from the user (a file, a parameter, a prime string, a checkpoint)."""
