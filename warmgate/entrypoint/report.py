"""A report as text: the ready marker's evidence as tables. Pure formatting (no I/O, no CLI).

`warmgate report` (commands.py) prints it, and the engine logs the same text when the gate
decides, pass or fail: per shape the first request against steady state, the load test's
percentiles, the phase timeline, memory, the causes of slow first requests (with the server's
start-up trace when it publishes one) and every gate check; for LLM prompt shapes also the
prompt lengths (target and achieved) and the load test's time to first token, inter-token latency
and output tokens per second.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from warmgate.state import Diagnosis, LatencyStats, LoadTestReport, Report

# Phases in lifecycle order; unknown ones follow in name order.
PHASE_ORDER = ("waiting-for-server", "warming", "load-testing", "post-warm-check")
MIB = 1024 * 1024


def format_report(report: Report) -> str:
    created = datetime.fromtimestamp(report.created_at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    verdict = "PASSED" if report.gate.passed else "FAILED"
    lines = [
        f"model {report.model} ({report.protocol}) at {report.server_url}; "
        f"attempt {report.attempts}; {created}",
        f"timeline: {_timeline(report.phases)}",
    ]
    if report.shapes:
        lines += ["", "warmup (smallest shape first):", *_table(_shape_rows(report))]
        if any(shape.prompt is not None for shape in report.shapes):
            lines += ["", *_prompt_lines(report)]
    if report.load_test is not None:
        lines += ["", *_load_lines(report)]
    if report.memory is not None:
        lines += ["", *_memory_lines(report)]
    if report.diagnosis is not None:
        lines += ["", *_diagnosis_lines(report.diagnosis)]
    lines += ["", f"gate {verdict}: {report.gate.reason}"]
    # What the verdict did not judge (e.g. no latency SLO): read with the verdict, not after it.
    lines += [f"  note: {note}" for note in report.gate.notes]
    for check in report.gate.checks:
        mark = "pass" if check.passed else "FAIL"
        measured = ""
        if check.value is not None:
            measured = f"{_number(check.value)}"
            if check.threshold is not None:
                measured += f" (limit {_number(check.threshold)})"
        lines.append(
            f"  [{mark}] {check.name:<24} {measured}{'  ' + check.detail if check.detail else ''}".rstrip()
        )
    return "\n".join(lines)


def _timeline(phases: dict[str, float]) -> str:
    ordered = [p for p in PHASE_ORDER if p in phases] + sorted(p for p in phases if p not in PHASE_ORDER)
    if not ordered:
        return "-"
    total = sum(phases.values())
    return " -> ".join(f"{p} {phases[p]:.2f}s" for p in ordered) + f" (total {total:.2f}s)"


def _shape_rows(report: Report) -> list[list[str]]:
    rows = [
        ["shape", "batch", "reqs", "errors", "first", "steady p50", "steady p95", "first/p50",
         "post-warm", "post/p50", "stable", "checked", "mismatch"]
    ]  # fmt: skip
    for shape in report.shapes:
        check = shape.concurrency_check
        if check is None:
            checked, mismatched = "-", "-"
        elif check.skipped:
            checked, mismatched = "skip", "-"
        else:
            checked, mismatched = str(check.checked), str(check.mismatches)
        rows.append(
            [
                shape.name,
                str(shape.batch_size),
                str(shape.requests),
                str(shape.errors),
                _ms(shape.first_s),
                _ms(shape.steady.p50_s),
                _ms(shape.steady.p95_s),
                _ratio(shape.first_to_steady_ratio),
                _ms(shape.post_warm_s),
                _ratio(shape.post_warm_ratio),
                "-" if shape.stable is None else ("yes" if shape.stable else "NO"),
                checked,
                mismatched,
            ]
        )
    return rows


def _prompt_lines(report: Report) -> list[str]:
    lines = [
        "prompts (first, steady and post-warm above are times to first token; every request's "
        "prompt starts with words no other request had, so prefix caching cannot serve them):"
    ]
    rows = [["shape", "target", "achieved", "counted by", "counts", "max_tokens", "stream", "chat", "note"]]
    for shape in report.shapes:
        prompt = shape.prompt
        if prompt is None:
            continue
        rows.append(
            [
                shape.name,
                str(prompt.target_tokens),
                "-" if prompt.achieved_tokens is None else str(prompt.achieved_tokens),
                prompt.counted_by or "-",
                str(prompt.calibration_requests),
                str(prompt.max_tokens),
                "yes" if prompt.stream else "no",
                "yes" if prompt.chat else "no",
                prompt.note or "-",
            ]
        )
    return lines + _table(rows)


def _token_lines(load: LoadTestReport) -> list[str]:
    lines = ["completions (TTFT: time to first token; ITL: gap between streamed tokens):"]
    rows = [
        [
            "scope",
            "count",
            "ttft p50",
            "ttft p95",
            "ttft p99",
            "itl p50",
            "itl p95",
            "itl p99",
            "out tokens",
            "tok/s",
        ]
    ]
    scopes = [("streamed", load.tokens)] if load.tokens is not None else []
    for scope, stats in [*scopes, *load.per_shape_tokens.items()]:
        if stats is None:
            continue
        rows.append(
            [
                scope,
                str(stats.ttft.count),
                _ms(stats.ttft.p50_s),
                _ms(stats.ttft.p95_s),
                _ms(stats.ttft.p99_s),
                _ms(stats.itl.p50_s),
                _ms(stats.itl.p95_s),
                _ms(stats.itl.p99_s),
                str(stats.output_tokens),
                f"{stats.output_tokens_per_s:.1f}",
            ]
        )
    return lines + _table(rows)


def _load_lines(report: Report) -> list[str]:
    load = report.load_test
    assert load is not None
    how = (
        f"concurrency {load.concurrency}"
        if load.mode == "closed"
        else f"{_number(load.target_rate or 0)} req/s"
    )
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(load.errors.items())) or "none"
    lines = [
        f"load test ({load.mode} loop, {how}, {load.duration_s:.2f}s): {load.requests} requests, "
        f"{load.throughput_rps:.1f} req/s, errors: {errors}"
        + (f"; stopped: {load.stopped}" if load.stopped else "")
    ]
    rows = [["scope", "count", "errors", "req/s", "p50", "p90", "p95", "p99", "max"]]
    rows.append(_latency_row("all", load.latency, sum(load.errors.values()), load.duration_s))
    for name, stats in load.per_shape.items():
        rows.append(
            _latency_row(name, stats, sum(load.per_shape_errors.get(name, {}).values()), load.duration_s)
        )
    lines += _table(rows)
    if load.tokens is not None or load.per_shape_tokens:
        lines += _token_lines(load)
    return lines


def _latency_row(scope: str, stats: LatencyStats, errors: int, duration_s: float) -> list[str]:
    rate = f"{stats.count / duration_s:.1f}" if duration_s > 0 else "-"
    return [
        scope,
        str(stats.count),
        str(errors),
        rate,
        _ms(stats.p50_s),
        _ms(stats.p90_s),
        _ms(stats.p95_s),
        _ms(stats.p99_s),
        _ms(stats.max_s),
    ]


def _memory_lines(report: Report) -> list[str]:
    memory = report.memory
    assert memory is not None
    if memory.peak_pss_bytes:
        peak = f"{memory.peak_pss_bytes / MIB:.0f} MiB PSS ({_mib(memory.peak_rss_bytes)} RSS)"
    else:
        peak = f"{_mib(memory.peak_rss_bytes)} RSS"
    if memory.limit_bytes:
        limit = f"limit {memory.limit_bytes / MIB:.0f} MiB from {memory.limit_source}"
    else:
        limit = "no memory limit known"
    lines = [f"memory: server peak {peak}, {memory.samples} samples; {limit}"]
    for gpu in memory.gpus:
        used, total = gpu.peak_used_bytes / MIB, gpu.total_bytes / MIB
        lines.append(f"  GPU {gpu.index} {gpu.name}: peak {used:.0f} of {total:.0f} MiB")
    return lines


def _diagnosis_lines(diagnosis: Diagnosis) -> list[str]:
    """The causes, each with its evidence and mitigation, then the server's start-up trace."""
    if diagnosis.causes:
        lines = ["causes (one-time costs the run saw):"]
    else:
        lines = [
            "causes: none (no first request over the gate's first-to-steady limit, no slowdown under load)"
        ]
    for cause in diagnosis.causes:
        cost = "" if cause.seconds is None else f" ({_seconds(cause.seconds)})"
        via = "" if cause.source == "measured" else f" [{cause.source}]"
        lines.append(f"  {cause.kind.replace('_', ' ')}{cost}{via}: {cause.evidence}")
        lines.append(f"    fix: {cause.mitigation}")
    lines += [f"  note: {note}" for note in diagnosis.notes]
    if diagnosis.startup:
        steps = " -> ".join(f"{step.name} {_seconds(step.seconds)}" for step in diagnosis.startup)
        lines.append(f"server start-up ({diagnosis.startup_source}): {steps}")
    return lines


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    milliseconds = seconds * 1000
    return f"{milliseconds:.2f} ms" if milliseconds < 10 else f"{milliseconds:.1f} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.0f} MiB"


def _number(value: float) -> str:
    return f"{value:.4g}"
