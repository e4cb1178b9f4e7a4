"""`warmgate shapes`: propose a `shapes:` section from the shapes real traffic used.

Sources, one per run:
- `--metrics URL`: a Prometheus endpoint of `warmgate serve`, whose
  `warmgate_modelserver_request_shapes_total{batch_size, dims}` counts requests by shape
  (inputs' names and datatypes then come from the model's metadata, `GET /v2/models/{model}` on
  the same server, or `--server`). Triton's metrics count requests and executions per model
  (`nv_inference_count`, `nv_inference_exec_count`), not shapes: such an endpoint is refused with
  a line that says so, and a request log is the way there.
- `--log FILE`: JSON lines, one per request (or per shape with a `count`), each with the request's
  OIP header: `{"inputs": [{"name": "input_ids", "shape": [8, 128], "datatype": "INT64"}], "count": 1}`.

It picks the fewest shapes whose requests cover `--cover` of the traffic (most requested first),
weights them by their share, says on stderr and in the YAML's leading comments what it left out,
and checks the section by loading it through the config model before printing it.

Imported before `warmgate run` spawns its server (commands.py registers it): nothing beyond
argparse at module level.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHAPES_METRIC = "warmgate_modelserver_request_shapes"
OTHER = "other"
FETCH_TIMEOUT_S = 10.0
# A log line or metrics page beyond this is not what this command reads.
MAX_INPUT_BYTES = 256 << 20
# Exit code when the traffic cannot be read or carries no shapes.
NO_TRAFFIC = 1


@dataclass(frozen=True)
class TrafficShape:
    """One shape traffic used: batch size (0: no batch dimension) and per input its dims."""

    batch_size: int
    # (input name, dims without the batch dimension), in name order; names may be "" when the
    # source only knows the dims (Prometheus labels), filled from the model's metadata.
    inputs: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def name(self) -> str:
        lengths = sorted({"x".join(map(str, dims)) for _, dims in self.inputs})
        return "-".join([f"bs{self.batch_size}", *lengths])[:63]


class TrafficError(Exception):
    """The source cannot be read or says nothing about shapes; the message says why."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    shapes = subparsers.add_parser(
        "shapes",
        help="propose a shapes: section from the shapes real traffic used",
        description="Read the shapes traffic used (the Prometheus endpoint of `warmgate serve`, or a "
        "JSON-lines request log) and print the fewest shapes that cover --cover of the requests, "
        "as YAML to paste into warmup.yaml. What is left out is listed on stderr.",
    )
    source = shapes.add_mutually_exclusive_group(required=True)
    source.add_argument("--metrics", metavar="URL", help="Prometheus endpoint of warmgate serve (…/metrics)")
    source.add_argument("--log", metavar="FILE", type=Path, help="JSON-lines request log ('-' for stdin)")
    shapes.add_argument("--cover", type=float, default=0.99, help="share of requests to cover (default 0.99)")
    shapes.add_argument("--model", default=None, help="model name (default: the only one in the source)")
    shapes.add_argument(
        "--server", metavar="URL", help="where to read model metadata (default: the metrics host)"
    )
    shapes.add_argument("--count", type=int, default=5, help="warmup requests per shape (default 5)")
    shapes.set_defaults(handler=handle_shapes)


def handle_shapes(args: argparse.Namespace) -> int:
    if not 0 < args.cover <= 1:
        print(f"warmgate shapes: --cover must be in (0, 1], got {args.cover}", file=sys.stderr)
        return NO_TRAFFIC
    try:
        if args.metrics:
            counts, model = from_metrics(_fetch(args.metrics), args.model)
            server = args.server or args.metrics.rsplit("/metrics", 1)[0]
            datatypes, names = _metadata(server, model)
            counts = Counter({_named(shape, names): n for shape, n in counts.items()})
        else:
            counts = from_log(_read_log(args.log))
            datatypes = {}
        section, summary = propose(counts, args.cover, datatypes, args.count)
    except TrafficError as exc:
        print(f"warmgate shapes: {exc}", file=sys.stderr)
        return NO_TRAFFIC
    for line in summary:
        print(f"warmgate shapes: {line}", file=sys.stderr)
    sys.stdout.write(section)
    return 0


def from_metrics(text: str, model: str | None) -> tuple[Counter[TrafficShape | None], str]:
    """Request counts by shape from a Prometheus text page (None: the server's "other" shapes)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: Counter[TrafficShape | None] = Counter()
    models: set[str] = set()
    triton = False
    try:
        for family in text_string_to_metric_families(text):
            triton = triton or family.name.startswith("nv_inference_")
            # The family is named with or without _total, depending on how the page declares it.
            if family.name.removesuffix("_total") != SHAPES_METRIC:
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                if model is not None and labels.get("model") != model:
                    continue
                models.add(labels.get("model", ""))
                counts[_from_labels(labels["batch_size"], labels["dims"])] += int(sample.value)
    except (ValueError, KeyError) as exc:
        raise TrafficError(f"not a Prometheus text page with shape labels: {exc}") from None
    if not models:
        if triton:
            raise TrafficError(
                "Triton's metrics count requests and batches per model (nv_inference_count, "
                "nv_inference_exec_count: their ratio is the mean batch size) but not the shapes of "
                "requests; give a request log (--log) instead"
            )
        raise TrafficError(f"no {SHAPES_METRIC} samples{f' for model {model}' if model else ''} in the page")
    if len(models) > 1:
        raise TrafficError(f"several models ({', '.join(sorted(models))}): name one with --model")
    return counts, models.pop()


def _from_labels(batch: str, dims: str) -> TrafficShape | None:
    if batch == OTHER:
        return None
    parsed = tuple(("", tuple(int(d) for d in part.split("x"))) for part in dims.split(",")) if dims else ()
    return TrafficShape(int(batch), parsed)


# What one line of a request log looks like (the request's OIP header, optionally with a count).
LOG_RECORD_FORM = '{"inputs": [{"name": "x", "shape": [8, 3, 224, 224]}], "count": 1}'


def from_log(lines: list[str]) -> Counter[TrafficShape | None]:
    counts: Counter[TrafficShape | None] = Counter()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            inputs = {spec["name"]: [int(d) for d in spec["shape"]] for spec in record["inputs"]}
            batched = record.get("batched", True)
            count = int(record.get("count", 1))
        except (ValueError, KeyError, TypeError) as exc:
            found = f"bad JSON: {exc}" if isinstance(exc, json.JSONDecodeError) else line.strip()[:80]
            raise TrafficError(
                f"line {number}: not a request record ({found}); expected {LOG_RECORD_FORM}"
            ) from None
        if not inputs:
            raise TrafficError(f"line {number}: a request without inputs")
        first = inputs[min(inputs)]
        batch = first[0] if batched and first else 0
        dims = tuple((name, tuple(shape[1:] if batched else shape)) for name, shape in sorted(inputs.items()))
        counts[TrafficShape(batch, dims)] += count
    return counts


def propose(
    counts: Counter[TrafficShape | None], cover: float, datatypes: dict[str, str], count: int
) -> tuple[str, list[str]]:
    """The YAML section and the summary lines (what it covers, what it leaves out)."""
    import yaml

    total = sum(counts.values())
    if total == 0:
        raise TrafficError("no requests in the source")
    known = sorted(
        ((n, s) for s, n in counts.items() if s is not None), key=lambda item: (-item[0], item[1].name)
    )
    chosen: list[tuple[int, TrafficShape]] = []
    covered = 0
    for n, shape in known:
        if covered / total >= cover:
            break
        chosen.append((n, shape))
        covered += n
    left = known[len(chosen) :]
    summary = [f"{len(chosen)} shapes cover {covered / total:.1%} of {total} requests (asked: {cover:.1%})"]
    if left:
        listed = ", ".join(f"{shape.name} ({n / total:.2%})" for n, shape in left[:10])
        summary.append(f"left out: {listed}" + (f" and {len(left) - 10} more" if len(left) > 10 else ""))
    if counts.get(None):
        summary.append(
            f"left out: {counts[None] / total:.2%} of requests had shapes beyond the server's label cap "
            '("other"): their shapes are unknown'
        )
    if not chosen:
        raise TrafficError("; ".join(summary) + "; no shape to propose")
    shapes = [_shape_entry(shape, n / covered, datatypes, count) for n, shape in chosen]
    _check(shapes)
    header = "".join(f"# {line}\n" for line in summary)
    # Flow style for the leaves (dims: [3, 224, 224]): a section a person reads before pasting.
    return header + yaml.safe_dump({"shapes": shapes}, sort_keys=False, default_flow_style=None), summary


def _shape_entry(shape: TrafficShape, weight: float, datatypes: dict[str, str], count: int) -> dict[str, Any]:
    return {
        "name": shape.name,
        "batch_size": shape.batch_size,
        "count": count,
        "weight": round(weight, 4),
        "inputs": {
            name: {"datatype": datatypes.get(name, "FP32"), "dims": list(dims) or [1], "data": "random"}
            for name, dims in shape.inputs
        },
    }


def _check(shapes: list[dict[str, Any]]) -> None:
    """Load the section through the config model, as `warmgate check` would."""
    from warmgate.config import ConfigError, validate_config

    raw = {"server": {"url": "http://127.0.0.1:8000", "protocol": "oip", "model": "m"}, "shapes": shapes}
    try:
        validate_config(raw, "proposed shapes", {})
    except ConfigError as exc:
        raise TrafficError(f"the proposed section does not load: {exc}") from None


def _named(shape: TrafficShape | None, names: list[str]) -> TrafficShape | None:
    """Prometheus labels carry dims in input-name order without the names: put them back."""
    if shape is None:
        return None
    if len(names) != len(shape.inputs):
        raise TrafficError(f"the metadata lists {len(names)} inputs, the shape labels {len(shape.inputs)}")
    return TrafficShape(shape.batch_size, tuple(zip(names, (d for _, d in shape.inputs), strict=True)))


def _metadata(server: str, model: str) -> tuple[dict[str, str], list[str]]:
    """Input datatypes by name, and the names in order, from the model's OIP metadata."""
    try:
        document = json.loads(_fetch(f"{server.rstrip('/')}/v2/models/{model}"))
        datatypes = {spec["name"]: spec["datatype"] for spec in document["inputs"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise TrafficError(f"model {model}'s metadata has no inputs: {exc}") from None
    return datatypes, sorted(datatypes)


def _fetch(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 - a URL the user gave
            return str(response.read(MAX_INPUT_BYTES).decode())
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
        raise TrafficError(f"cannot read {url}: {exc}") from None


def _read_log(path: Path) -> list[str]:
    try:
        if str(path) == "-":
            return sys.stdin.read(MAX_INPUT_BYTES).splitlines()
        with path.open(encoding="utf-8") as handle:
            return handle.read(MAX_INPUT_BYTES).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrafficError(f"cannot read {path}: {exc}") from None
