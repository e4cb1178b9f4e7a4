"""The error every part raises for a mistake in its configuration or usage (exit 2, one line).

Defined here rather than beside the pydantic config so that raising or catching it costs no
imports: the CLI catches it before any subcommand loaded the config, and the probe's serving
process, which loads no pydantic, raises it too (docs/probe.md, "Memory")."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration or usage error: one line, already naming where it is."""
