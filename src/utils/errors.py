"""The one exception type for bad input.

Every message is a single line that says what was wrong, where, and how to fix it; the
entry points print it without a traceback and exit non-zero.
"""


class KarnnaError(Exception):
    """Bad input from the user (a file, a parameter, a prime string, a checkpoint)."""


def redact_url(url: str) -> str:
    """A database URL fit for a message: the password replaced by ***."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name if it has none), for a one-line
    error that quotes it."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
