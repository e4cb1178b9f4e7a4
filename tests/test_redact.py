"""warmgate.redact: the user:password part of URLs never leaves warmgate."""

from __future__ import annotations

import time

import pytest

from warmgate.redact import redact_url, redact_urls

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pass@models:8000/v2/health/ready", "http://***@models:8000/v2/health/ready"),
        ("https://token@models/v1?model=a", "https://***@models/v1?model=a"),
        # An unescaped "@" in the password: the userinfo runs to the authority's last "@".
        ("http://user:p@ss@models:8000/x", "http://***@models:8000/x"),
        ("grpc://u:p@[::1]:8001", "grpc://***@[::1]:8001"),
        ("HTTP://U:P@H", "HTTP://***@H"),
        # No credentials: unchanged, including an "@" in the path.
        ("http://models:8000/v2/models/m@1/ready", "http://models:8000/v2/models/m@1/ready"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("", ""),
        ("http://[::1", "http://[::1"),
        ("not a url at all", "not a url at all"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_every_url_in_free_text_is_redacted() -> None:
    text = (
        "GET http://alice:s3cret@10.0.0.1:8000/v2/health/ready: cannot connect\n"
        "then https://bob:hunter2@other/x (retrying)"
    )
    redacted = redact_urls(text)
    assert "s3cret" not in redacted and "hunter2" not in redacted and "alice" not in redacted
    assert "http://***@10.0.0.1:8000/v2/health/ready: cannot connect" in redacted
    assert "https://***@other/x (retrying)" in redacted


def test_junk_never_raises() -> None:
    assert redact_url(b"http://a:b@c") == "***"  # type: ignore[arg-type]
    assert redact_url(None) == "***"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "junk",
    ["a." * 500_000, "http://" + "a" * 1_000_000, "a:" * 500_000, ("x://" + "y" * 20) * 50_000],
)
def test_megabytes_of_junk_take_linear_time(junk: str) -> None:
    started = time.perf_counter()
    redact_urls(junk)
    # Linear: well under a second for a megabyte; a quadratic scan would take minutes.
    assert time.perf_counter() - started < 2.0
