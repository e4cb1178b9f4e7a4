"""Credentials never leave warmgate: hide the user:password part of URLs before they are shown.

A server URL such as `http://user:secret@models:8000/v2` is legitimate configuration, but the
URL travels into probe bodies, pod conditions, state files and log lines, and HTTP client errors
quote it. Everything warmgate writes or serves passes through one of these two functions:

- `redact_url(url)`: one URL, e.g. a config value -> `http://***@models:8000/v2`;
- `redact_urls(text)`: every URL inside free text, e.g. an error message that quotes one.

The userinfo is found the way RFC 3986 delimits it: after `scheme://`, up to the last `@` before
the first `/`, `?`, `#` or whitespace. Scheme, host, port, path and query are kept. Both functions
work on any string and never raise: redaction must not become the failure it reports on.
"""

from __future__ import annotations

import logging
import re

REDACTED = "***"

# scheme "://" userinfo "@": the userinfo may not contain "/", "?", "#" or whitespace (the
# authority ends there), and it runs to the *last* "@" of the authority, as URL parsers read
# `http://user:p@ss@host` (an unescaped "@" in a password is common in hand-written configs).
# The scheme is bounded so that text full of word boundaries cannot make the search quadratic;
# userinfo runs cannot overlap (each starts after "://" and stops at the next "/"), so the whole
# substitution stays linear in the length of the text.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://)[^\s/?#]*@")


def redact_urls(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `***`."""
    try:
        return _USERINFO.sub(lambda match: f"{match.group('scheme')}{REDACTED}@", text)
    except Exception:  # not a string after all: say nothing rather than leak or fail
        return REDACTED


def redact_url(url: str) -> str:
    """One URL with its userinfo (user, or user:password) replaced by `***`."""
    return redact_urls(url)


class RedactingFilter(logging.Filter):
    """A log handler filter: the formatted message, URLs redacted, replaces the record's own (an
    aiohttp error quoting `http://user:pass@host` must not reach the log as it is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
