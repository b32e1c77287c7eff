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
