"""The Grafana dashboard beside the chart queries only metrics the probe sidecar exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO, require_tool

DASHBOARD = REPO / "deploy" / "helm" / "dashboards" / "warmgate.json"
METRICS_SOURCES = [REPO / "warmgate" / "probe" / name for name in ("metrics.py", "shapes.py")]


def exposed_metric_names() -> set[str]:
    # The families the probe defines; summaries also expose _count and _sum, counters _total.
    names = {
        name for path in METRICS_SOURCES for name in re.findall(r'"(warmgate_[a-z0-9_]+)"', path.read_text())
    }
    return names | {f"{n}_{suffix}" for n in names for suffix in ("count", "sum", "info", "total")}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_dashboard_queries_only_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_metric_names()
    assert "warmgate_shape_first_request_seconds" in exposed, "probe/metrics.py moved: update this test"
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\bwarmgate_[a-z0-9_]+", target["expr"]))
    assert used, "the dashboard has no warmgate queries"
    assert used <= exposed, f"not exposed by the sidecar: {sorted(used - exposed)}"
    # What the issue asks the dashboard to show.
    for wanted in (
        "warmgate_shape_first_request_seconds",
        "warmgate_shape_steady_seconds",
        "warmgate_phase_duration_seconds",
        "warmgate_ready",
    ):
        assert wanted in used


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


@pytest.mark.timeout(60)
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    # promtool parses PromQL in rule files; Grafana's variables become plain regexes first.
    exprs = [
        q.replace("$namespace", ".*").replace("$pod", ".*")
        for q in queries(json.loads(DASHBOARD.read_text()))
    ]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_ended_runs_are_told_apart_from_warming_pods() -> None:
    # A pod whose entrypoint stopped or failed is not "still warming": the dashboard says it ended.
    by_title = {panel["title"]: panel for panel in panels(json.loads(DASHBOARD.read_text()))}
    assert "warmgate_entrypoint_running" in by_title["Pods still warming"]["targets"][0]["expr"]
    assert "warmgate_entrypoint_running" in by_title["Runs ended"]["targets"][0]["expr"]


def test_unwarmed_shape_traffic_has_a_panel_per_shape() -> None:
    by_title = {panel["title"]: panel for panel in panels(json.loads(DASHBOARD.read_text()))}
    [target] = by_title["Requests with a shape no warmup had, per shape"]["targets"]
    # A rate of the probe's counter, one series per shape label.
    assert target["expr"].startswith("sum by (shape) (rate(warmgate_unwarmed_shape_requests_total{")
    assert target["legendFormat"] == "{{shape}}"
    assert (
        "increase(warmgate_unwarmed_shape_requests_total"
        in (by_title["Unwarmed-shape requests (last hour)"]["targets"][0]["expr"])
    )


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
