"""`warmgate warmpool` against the loopback fake of the Kubernetes API (tests/support/fake_kube.py).

The official client talks to the fake over HTTP; the HPA every patch produces is validated against
the real autoscaling/v2 schema (strict). Pods become warm between polls through the fake's request
hooks, never through sleeps.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import fake_kube
from tests.support.fake_kube import FakeKube, Recorded, failure
from warmgate.probe.kube import Connection, connect
from warmgate.probe.warmpool import (
    EXIT_NOT_SET,
    EXIT_NOT_WARM_IN_TIME,
    HpaKube,
    WarmPoolError,
    WarmPoolOptions,
    WarmPoolResult,
    set_floor,
)

pytest.importorskip("kubernetes")
pytestmark = pytest.mark.timeout(60)

NS = "shop"
HPA = "demo-warmgate"
HPA_PATH = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{HPA}"
# The pod labels the chart's Deployment selects on (without a color).
POD_LABELS = {"app.kubernetes.io/name": "warmgate", "app.kubernetes.io/instance": "demo"}


def hpa(min_replicas: int = 2, max_replicas: int = 10) -> dict[str, Any]:
    """The chart's HPA (templates/hpa.yaml) as the API stores it, with the controller's status."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": HPA, "namespace": NS, "labels": {"app.kubernetes.io/name": "warmgate"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": HPA},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
        "status": {"currentReplicas": min_replicas, "desiredReplicas": min_replicas},
    }


def deployment(replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": HPA, "namespace": NS, "labels": POD_LABELS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": POD_LABELS},
            "template": {
                "metadata": {"labels": POD_LABELS},
                "spec": {"containers": [{"name": "model", "image": "warmgate/warmgate:0.1.0"}]},
            },
        },
    }


def add_pod(fake: FakeKube, index: int, *, ready: bool = True, warm: bool | None = True) -> None:
    pod = fake_kube.pod("x", index, ready=ready, warm=warm, namespace=NS)
    pod["metadata"]["name"] = f"{HPA}-{index}"
    pod["metadata"]["labels"] = POD_LABELS
    fake.add(pod)


class Cluster:
    def __init__(self, fake: FakeKube, url: str) -> None:
        self.fake, self.url = fake, url

    def run(self, **overrides: Any) -> WarmPoolResult:
        values: dict[str, Any] = {"namespace": NS, "hpa": HPA, "min_replicas": 4, "poll_interval_s": 0.01}
        values.update(overrides)
        with connect(Connection(server=self.url, token=self.fake.token)) as base:
            return set_floor(HpaKube(base.api_client), WarmPoolOptions(**values))

    def floor(self) -> int:
        return int(self.fake.get("HorizontalPodAutoscaler", NS, HPA)["spec"]["minReplicas"])


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """The chart's HPA at 2..10 over its Deployment with 2 warm pods."""
    fake = FakeKube()
    fake.add(hpa())
    fake.add(deployment())
    for index in range(2):
        add_pod(fake, index)
    with fake_kube.serve(fake) as url:
        yield Cluster(fake, url)
    assert fake.invalid == [], "warmpool sent a patch producing an invalid object"


def test_sets_the_floor_with_a_json_patch_that_tests_the_ceiling(cluster: Cluster) -> None:
    result = cluster.run(min_replicas=6)

    assert (result.previous, result.floor, result.max_replicas, result.patched) == (2, 6, 10, True)
    assert cluster.floor() == 6
    [patch] = cluster.fake.patches(HPA_PATH)
    assert patch.content_type == "application/json-patch+json"
    assert patch.body == [
        {"op": "test", "path": "/spec/maxReplicas", "value": 10},
        {"op": "add", "path": "/spec/minReplicas", "value": 6},
    ]
    # Only the floor changed: the ceiling, target and metrics are as the chart rendered them.
    stored = cluster.fake.get("HorizontalPodAutoscaler", NS, HPA)
    assert {**stored["spec"], "minReplicas": 2} == hpa()["spec"]


def test_lowering_the_floor_after_the_peak(cluster: Cluster) -> None:
    cluster.run(min_replicas=6)
    result = cluster.run(min_replicas=2)

    assert (result.previous, result.floor, result.patched) == (6, 2, True)
    assert cluster.floor() == 2


def test_the_same_floor_again_patches_nothing(cluster: Cluster) -> None:
    result = cluster.run(min_replicas=2)

    assert result.patched is False and result.previous == 2
    assert cluster.fake.patches() == []


def test_an_hpa_without_min_replicas_defaults_to_1_and_gets_the_field(cluster: Cluster) -> None:
    cluster.fake.update("HorizontalPodAutoscaler", NS, HPA, lambda h: h["spec"].pop("minReplicas"))

    result = cluster.run(min_replicas=3)

    assert (result.previous, cluster.floor()) == (1, 3)


def test_refuses_a_floor_above_max_replicas(cluster: Cluster) -> None:
    with pytest.raises(WarmPoolError, match=r"refused: minReplicas 11 is above the maxReplicas 10") as info:
        cluster.run(min_replicas=11)

    assert info.value.exit_code == EXIT_NOT_SET
    assert cluster.fake.patches() == []
    # The ceiling itself is allowed.
    assert cluster.run(min_replicas=10).floor == 10


def test_a_ceiling_lowered_between_read_and_patch_is_read_again(cluster: Cluster) -> None:
    def lower_the_ceiling_after_the_first_read(fake: FakeKube, record: Recorded) -> None:
        if record.method == "GET" and record.path == HPA_PATH and len(fake.requests) == 1:
            fake.update("HorizontalPodAutoscaler", NS, HPA, lambda h: h["spec"].update(maxReplicas=5))

    cluster.fake.on_request.append(lower_the_ceiling_after_the_first_read)

    with pytest.raises(WarmPoolError, match=r"minReplicas 6 is above the maxReplicas 5"):
        cluster.run(min_replicas=6)

    # The first patch's test operation failed against the new ceiling; nothing was written.
    [refused] = cluster.fake.patches(HPA_PATH)
    assert refused.status >= 400
    assert cluster.floor() == 2


def test_a_missing_hpa_is_one_line_naming_it(cluster: Cluster) -> None:
    with pytest.raises(WarmPoolError, match=rf"no horizontalpodautoscaler {NS}/other .*autoscaling.enabled"):
        cluster.run(hpa="other")


def test_forbidden_names_rbac_and_changes_nothing(cluster: Cluster) -> None:
    cluster.fake.failures[("PATCH", HPA_PATH)] = failure(
        403, 'cannot patch resource "horizontalpodautoscalers"'
    )

    with pytest.raises(
        WarmPoolError, match=r"minReplicas not set: .*HTTP 403 Forbidden.*check the RBAC"
    ) as info:
        cluster.run(min_replicas=6)

    assert info.value.exit_code == EXIT_NOT_SET
    assert cluster.floor() == 2


def test_forbidden_to_read_is_not_set_either(cluster: Cluster) -> None:
    cluster.fake.failures[("GET", HPA_PATH)] = failure(403)

    with pytest.raises(WarmPoolError, match=r"HTTP 403") as info:
        cluster.run()
    assert info.value.exit_code == EXIT_NOT_SET


def test_dry_run_validates_and_persists_nothing(cluster: Cluster) -> None:
    result = cluster.run(min_replicas=6, dry_run=True, wait=True)

    assert result.patched and result.dry_run and result.warm_pods is None
    [patch] = cluster.fake.patches(HPA_PATH)
    assert patch.query.get("dryRun") == "All"
    assert cluster.floor() == 2


# ---- waiting for warm pods ---------------------------------------------------------------------


def test_waits_until_the_new_pods_are_ready_and_warm(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The scale-out as the HPA controller would do it: pods appear cold, then become warm."""
    pod_lists: list[Recorded] = []

    def scale_out_over_the_polls(fake: FakeKube, record: Recorded) -> None:
        if not record.path.endswith("/pods"):
            return
        pod_lists.append(record)
        if len(pod_lists) == 1:
            add_pod(fake, 2, ready=True, warm=False)
            add_pod(fake, 3, ready=False, warm=False)
        elif len(pod_lists) == 3:
            for name in (f"{HPA}-2", f"{HPA}-3"):
                fake.set_pod_condition(NS, name, "warmgate.dev/warm", True)
                fake.set_pod_condition(NS, name, "Ready", True)

    cluster.fake.on_request.append(scale_out_over_the_polls)
    caplog.set_level(logging.INFO, logger="warmgate.warmpool")

    result = cluster.run(min_replicas=4, wait=True)

    assert result.warm_pods == 4 and len(pod_lists) == 4
    # The pods were found through the scale target Deployment's selector.
    assert "app.kubernetes.io/instance=demo" in pod_lists[0].query["labelSelector"]
    progress = [r.getMessage() for r in caplog.records if "waiting on" in r.getMessage()]
    assert progress[0].endswith("2/4 Ready and warmgate.dev/warm; waiting on 2 more pods to be created")
    assert progress[1].endswith(
        f"waiting on pod {HPA}-2: Ready=False (ReadinessGatesNotReady) (+1 more not warm)"
    )
    # Progress is logged when it changes, not at every poll.
    assert len(progress) == 2


def test_wait_deadline_exits_3_with_the_floor_set(cluster: Cluster) -> None:
    add_pod(cluster.fake, 2, ready=True, warm=False)

    with pytest.raises(WarmPoolError, match=r"minReplicas is 3, but after 0.2s only 2/3 Ready and") as info:
        cluster.run(min_replicas=3, wait=True, timeout_s=0.2)

    assert info.value.exit_code == EXIT_NOT_WARM_IN_TIME
    assert cluster.floor() == 3


def test_without_the_condition_ready_pods_count(cluster: Cluster) -> None:
    add_pod(cluster.fake, 2, ready=True, warm=None)

    with pytest.raises(WarmPoolError, match=r"no warmgate.dev/warm condition"):
        cluster.run(min_replicas=3, wait=True, timeout_s=0.1)
    assert cluster.run(min_replicas=3, wait=True, condition_type=None).warm_pods == 3


def test_an_explicit_selector_needs_no_deployment_read(cluster: Cluster) -> None:
    result = cluster.run(min_replicas=2, wait=True, selector=POD_LABELS)

    assert result.warm_pods == 2
    assert not [r for r in cluster.fake.requests if "/deployments" in r.path]


def test_terminating_pods_do_not_count(cluster: Cluster) -> None:
    cluster.fake.update(
        "Pod", NS, f"{HPA}-1", lambda p: p["metadata"].update(deletionTimestamp="2026-01-01T00:00:05Z")
    )

    with pytest.raises(WarmPoolError, match=r"only 1/2"):
        cluster.run(min_replicas=2, wait=True, timeout_s=0.1)


def test_forbidden_to_list_pods_is_exit_3_with_the_floor_set(cluster: Cluster) -> None:
    cluster.fake.failures[("GET", f"/api/v1/namespaces/{NS}/pods")] = failure(403)

    with pytest.raises(WarmPoolError, match=r"minReplicas is 4, but waiting for its pods failed") as info:
        cluster.run(min_replicas=4, wait=True, selector=POD_LABELS)
    assert info.value.exit_code == EXIT_NOT_WARM_IN_TIME
    assert cluster.floor() == 4


# ---- the CLI, as a real process ------------------------------------------------------------------


def warmgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def cli_args(cluster: Cluster, tmp_path: Path, *args: str) -> list[str]:
    token = tmp_path / "token"
    token.write_text(str(cluster.fake.token))
    return [
        "warmpool", "-n", NS, "--hpa", HPA, "--server", cluster.url, "--token-file", str(token), *args,
    ]  # fmt: skip


def test_cli_sets_the_floor_waits_and_prints_one_line(cluster: Cluster, tmp_path: Path) -> None:
    add_pod(cluster.fake, 2)
    done = warmgate(
        *cli_args(cluster, tmp_path, "--min-replicas", "3", "--wait", "--poll-interval", "0.01",
                  "--selector", "app.kubernetes.io/name=warmgate,app.kubernetes.io/instance=demo"),
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{HPA}: minReplicas 2 -> 3 (maxReplicas 10); 3 pods warm"
    assert cluster.floor() == 3

    again = warmgate(*cli_args(cluster, tmp_path, "--min-replicas", "3"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{HPA}: minReplicas already 3 (maxReplicas 10)"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--min-replicas", "11"], 1, "refused: minReplicas 11 is above the maxReplicas 10"),
        (["--min-replicas", "3", "--wait", "--timeout", "0.2", "--poll-interval", "0.01"], 3, "only 2/3"),
    ],
)
def test_cli_failure_is_one_error_line(
    args: list[str], code: int, message: str, cluster: Cluster, tmp_path: Path
) -> None:
    done = warmgate(*cli_args(cluster, tmp_path, *args), cwd=tmp_path)

    assert done.returncode == code, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-replicas", "0"], "--min-replicas: must be >= 1"),
        (["--min-replicas", "2", "--wait", "--timeout", "0"], "--timeout: must be > 0"),
        (["--min-replicas", "2", "--selector", "a=b"], "--selector: only with --wait"),
        (["--min-replicas", "2", "--wait", "--selector", "a!=b"], "is not KEY=VALUE"),
        (["--min-replicas", "2", "--token-file", "/nonexistent"], "--token-file: needs --server"),
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = warmgate("warmpool", "-n", NS, "--hpa", HPA, *args, cwd=tmp_path)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
