"""The Grafana dashboard beside the chart queries only metrics the probe sidecar exposes."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.deploy.conftest import REPO

DASHBOARD = REPO / "deploy" / "helm" / "dashboards" / "warmgate.json"
METRICS_SOURCE = REPO / "warmgate" / "probe" / "metrics.py"


def exposed_metric_names() -> set[str]:
    # The families probe/metrics.py defines; summaries also expose _count and _sum.
    names = set(re.findall(r'"(warmgate_[a-z0-9_]+)"', METRICS_SOURCE.read_text()))
    return names | {f"{n}_{suffix}" for n in names for suffix in ("count", "sum", "info")}


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
