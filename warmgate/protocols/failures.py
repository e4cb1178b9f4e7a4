"""The kinds of failed request, as the load test counts them (besides http_<status>) and the probe
exports them at 0. Light on purpose: the probe's serving process loads no HTTP client library."""

from __future__ import annotations

TIMEOUT = "timeout"
CONNECTION = "connection"
INVALID = "invalid_response"

# How a completion stream fails (LLM prompt shapes).
STREAM_STALLED = "stream_stalled"
STREAM_TRUNCATED = "stream_truncated"
STREAM_MALFORMED = "stream_malformed"
STREAM_ERROR = "stream_error"
# Not a secret: the failure kind of an answer without a single generated token.
NO_FIRST_TOKEN = "no_first_token"  # noqa: S105
STREAM_KINDS = (STREAM_STALLED, STREAM_TRUNCATED, STREAM_MALFORMED, STREAM_ERROR, NO_FIRST_TOKEN)
