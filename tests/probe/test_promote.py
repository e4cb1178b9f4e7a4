"""`warmgate promote` against a loopback fake of the Kubernetes API (tests/support/fake_kube.py).

The official client talks to the fake over HTTP; every object the fake stores or a patch produces is
validated against the real Kubernetes schemas. Pods change between promote's polls through the
fake's request hooks, never through sleeps.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import fake_kube
from tests.support.fake_kube import FakeKube, Recorded
from warmgate.config import ConfigError
from warmgate.probe.kube import Connection, Kube, KubeError, connect
from warmgate.probe.promote import promote
from warmgate.probe.promote_options import (
    EXIT_HALF_SWITCHED,
    EXIT_NOT_PROMOTED,
    EXIT_PROMOTED,
    EXIT_SCALE_DOWN_FAILED,
    REPLICAS_ANNOTATION,
    PromoteError,
    PromoteOptions,
)
from warmgate.probe.promote_pods import parse_p95, pod_problem

pytest.importorskip("kubernetes")

NS = "shop"
STABLE = f"/api/v1/namespaces/{NS}/services/demo"
PREVIEW = f"/api/v1/namespaces/{NS}/services/demo-preview"


class Cluster:
    def __init__(self, fake: FakeKube, url: str) -> None:
        self.fake, self.url = fake, url

    def kube(self) -> Kube:
        return connect(Connection(server=self.url, token=self.fake.token))

    def selector_color(self, service: str = "demo") -> str:
        return str(self.fake.get("Service", NS, service)["spec"]["selector"]["warmgate.dev/color"])

    def replicas(self, color: str) -> int:
        return int(self.fake.get("Deployment", NS, f"demo-{color}-warmgate")["spec"]["replicas"])


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """blue active with 2 warm pods, green rolled out with 2 warm pods; stable and preview Services."""
    fake = FakeKube()
    fake.add(fake_kube.service("demo", "blue", NS))
    fake.add(fake_kube.service("demo-preview", "green", NS, role="preview"))
    for color in ("blue", "green"):
        fake.add(fake_kube.deployment(color, replicas=2, namespace=NS))
        for index in range(2):
            fake.add(fake_kube.pod(color, index, namespace=NS))
    with fake_kube.serve(fake) as url:
        yield Cluster(fake, url)
    assert fake.invalid == [], "promote sent a patch producing an invalid object"


def options(**overrides: Any) -> PromoteOptions:
    values: dict[str, Any] = {
        "namespace": NS,
        "service": "demo",
        "target": "green",
        "timeout_s": 10.0,
        "poll_interval_s": 0.01,
    }
    values.update(overrides)
    return PromoteOptions(**values)


def run_promote(cluster: Cluster, **overrides: Any) -> Any:
    with cluster.kube() as kube:
        return promote(kube, options(**overrides))


def test_switches_stable_and_preview_services(cluster: Cluster) -> None:
    result = run_promote(cluster)

    assert (result.previous, result.target, result.switched) == ("blue", "green", True)
    assert cluster.selector_color("demo") == "green"
    assert cluster.selector_color("demo-preview") == "blue"
    stable_patch = cluster.fake.patches(STABLE)[0]
    assert stable_patch.content_type == "application/merge-patch+json"
    assert stable_patch.body["spec"] == {"selector": {"warmgate.dev/color": "green"}}
    # Guarded by the resourceVersion promote read: a concurrent change fails instead of being lost.
    assert stable_patch.body["metadata"]["resourceVersion"]
    # Nothing is scaled down unless asked.
    assert cluster.replicas("blue") == 2


def test_already_active_color_is_a_no_op(cluster: Cluster) -> None:
    result = run_promote(cluster, target="blue")

    assert result.switched is False
    assert cluster.fake.patches() == []


def test_waits_until_every_target_pod_is_warm(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster.fake.set_pod_condition(NS, "demo-green-warmgate-1", "warmgate.dev/warm", False)
    cluster.fake.set_pod_condition(NS, "demo-green-warmgate-1", "Ready", False)
    green_lists: list[Recorded] = []

    def warm_up_after_two_polls(fake: FakeKube, record: Recorded) -> None:
        if record.path.endswith("/pods") and "warmgate.dev/color=green" in record.query.get(
            "labelSelector", ""
        ):
            green_lists.append(record)
            if len(green_lists) == 2:
                fake.set_pod_condition(NS, "demo-green-warmgate-1", "warmgate.dev/warm", True)
                fake.set_pod_condition(NS, "demo-green-warmgate-1", "Ready", True)

    cluster.fake.on_request.append(warm_up_after_two_polls)
    caplog.set_level(logging.INFO, logger="warmgate.promote")

    run_promote(cluster)

    assert len(green_lists) >= 3
    assert cluster.selector_color() == "green"
    waiting = [r.getMessage() for r in caplog.records if "waiting on" in r.getMessage()]
    assert waiting and "pod demo-green-warmgate-1: Ready=False" in waiting[0]


def test_times_out_without_switching_when_a_pod_never_gets_warm(cluster: Cluster) -> None:
    cluster.fake.set_pod_condition(NS, "demo-green-warmgate-0", "warmgate.dev/warm", False)

    with pytest.raises(
        PromoteError, match=r"timed out after 0.2s .*demo-green-warmgate-0: warmgate.dev/warm=False"
    ) as info:
        run_promote(cluster, timeout_s=0.2)

    assert info.value.exit_code == EXIT_NOT_PROMOTED
    assert cluster.fake.patches() == []
    assert cluster.selector_color() == "blue"


def test_pods_without_the_warm_condition_are_not_warm_unless_told(cluster: Cluster) -> None:
    for index in range(2):
        name = f"demo-green-warmgate-{index}"
        cluster.fake.update("Pod", NS, name, lambda p: p["status"].update(
            conditions=[c for c in p["status"]["conditions"] if c["type"] != "warmgate.dev/warm"]
        ))  # fmt: skip

    with pytest.raises(PromoteError, match=r"no warmgate.dev/warm condition"):
        run_promote(cluster, timeout_s=0.1)

    assert run_promote(cluster, condition_type=None).switched


def test_waits_for_the_rollout_not_just_the_pods_that_exist(cluster: Cluster) -> None:
    # 3 replicas wanted, the third pod not created yet: the two warm ones are not enough.
    cluster.fake.update("Deployment", NS, "demo-green-warmgate", lambda d: d["spec"].update(replicas=3))

    with pytest.raises(PromoteError, match=r"waiting on deployment demo-green-warmgate: 2/3 pods updated"):
        run_promote(cluster, timeout_s=0.1)

    # The controller reports 3 updated replicas, but the third pod is not listed yet.
    cluster.fake.update(
        "Deployment", NS, "demo-green-warmgate", lambda d: d["status"].update(replicas=3, updatedReplicas=3)
    )
    with pytest.raises(PromoteError, match=r"2/3 pods Ready and warm; waiting on 2/3 pods exist"):
        run_promote(cluster, timeout_s=0.1)
    assert cluster.fake.patches() == []


def test_refuses_a_color_scaled_to_zero_at_once(cluster: Cluster) -> None:
    cluster.fake.update("Deployment", NS, "demo-green-warmgate", lambda d: d["spec"].update(replicas=0))

    with pytest.raises(PromoteError, match=r"scaled to 0"):
        run_promote(cluster, timeout_s=60)


def test_refuses_a_p95_regression_beyond_the_margin(cluster: Cluster) -> None:
    for index, value in enumerate((0.020, 0.022)):
        cluster.fake.pod_metrics[(NS, f"demo-blue-warmgate-{index}", 8086)] = fake_kube.metrics_text(value)
    for index, value in enumerate((0.021, 0.030)):
        cluster.fake.pod_metrics[(NS, f"demo-green-warmgate-{index}", 8086)] = fake_kube.metrics_text(value)

    # Worst green pod 30 ms against the blue median 21 ms: +43 %.
    with pytest.raises(PromoteError, match=r"refused: p95 regression: target p95 30.0 ms .* active 21.0 ms"):
        run_promote(cluster, max_p95_regression=0.2)
    assert cluster.fake.patches() == []

    result = run_promote(cluster, max_p95_regression=0.5)
    assert result.switched
    assert (result.target_p95_s, result.active_p95_s) == (pytest.approx(0.030), pytest.approx(0.021))
    # The metrics were read through the API server's pod proxy, at the sidecar's port.
    proxied = [r.path for r in cluster.fake.requests if "/proxy/" in r.path]
    assert f"/api/v1/namespaces/{NS}/pods/demo-green-warmgate-1:8086/proxy/metrics" in proxied


def test_p95_comparison_needs_a_baseline(cluster: Cluster) -> None:
    for index in range(2):
        cluster.fake.pod_metrics[(NS, f"demo-green-warmgate-{index}", 8086)] = fake_kube.metrics_text(0.02)
        cluster.fake.pod_metrics[(NS, f"demo-blue-warmgate-{index}", 8086)] = fake_kube.metrics_text(None)

    with pytest.raises(PromoteError, match=r"no baseline"):
        run_promote(cluster, max_p95_regression=0.1)
    assert cluster.fake.patches() == []


def test_dry_run_validates_every_patch_with_the_api_and_changes_nothing(cluster: Cluster) -> None:
    result = run_promote(cluster, dry_run=True, scale_down_after_s=0)

    assert result.switched is False
    assert result.scaled_down == ["demo-blue-warmgate"]
    patches = cluster.fake.patches()
    assert {r.path for r in patches} == {
        STABLE,
        PREVIEW,
        f"/apis/apps/v1/namespaces/{NS}/deployments/demo-blue-warmgate",
    }
    assert all(r.query.get("dryRun") == "All" and r.status == 200 for r in patches)
    assert cluster.selector_color() == "blue"
    assert cluster.replicas("blue") == 2


def test_scales_the_old_color_down_after_the_delay(cluster: Cluster) -> None:
    slept: list[float] = []
    with cluster.kube() as kube:
        result = promote(kube, options(scale_down_after_s=300), sleep=slept.append)

    assert 300 in slept
    assert result.scaled_down == ["demo-blue-warmgate"]
    blue = cluster.fake.get("Deployment", NS, "demo-blue-warmgate")
    assert blue["spec"]["replicas"] == 0
    assert blue["metadata"]["annotations"][REPLICAS_ANNOTATION] == "2"
    assert cluster.replicas("green") == 2


def test_does_not_scale_down_when_traffic_went_back_during_the_delay(cluster: Cluster) -> None:
    def someone_rolls_back(seconds: float) -> None:
        if seconds == 60:
            cluster.fake.update(
                "Service", NS, "demo", lambda s: s["spec"]["selector"].update({"warmgate.dev/color": "blue"})
            )

    with cluster.kube() as kube:
        result = promote(kube, options(scale_down_after_s=60), sleep=someone_rolls_back)

    assert result.scaled_down == []
    assert cluster.replicas("blue") == 2


def test_a_failed_scale_down_reports_that_traffic_did_move(cluster: Cluster) -> None:
    cluster.fake.failures[("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/demo-blue-warmgate")] = (
        403,
        "Forbidden",
        'deployments.apps "demo-blue-warmgate" is forbidden',
    )
    with pytest.raises(
        PromoteError, match=r"promoted to green, but scaling blue down failed: .*HTTP 403"
    ) as info:
        run_promote(cluster, scale_down_after_s=0)

    assert info.value.exit_code == EXIT_SCALE_DOWN_FAILED
    assert cluster.selector_color() == "green"


def test_a_failed_preview_patch_reverts_the_stable_service(cluster: Cluster) -> None:
    cluster.fake.failures[("PATCH", PREVIEW)] = (500, "InternalError", "etcdserver: request timed out")

    with pytest.raises(
        PromoteError, match=r"not switched: .*HTTP 500 .*etcdserver.*demo reverted to blue"
    ) as info:
        run_promote(cluster)

    assert info.value.exit_code == EXIT_NOT_PROMOTED
    assert cluster.selector_color("demo") == "blue"
    assert cluster.selector_color("demo-preview") == "green"
    assert [r.body["spec"]["selector"]["warmgate.dev/color"] for r in cluster.fake.patches(STABLE)] == [
        "green",
        "blue",
    ]


def test_half_switch_is_reported_with_the_command_that_fixes_it(cluster: Cluster) -> None:
    cluster.fake.failures[("PATCH", PREVIEW)] = (500, "InternalError", "boom")

    def break_stable_after_first_patch(fake: FakeKube, record: Recorded) -> None:
        if record.method == "PATCH" and record.path == STABLE:
            fake.failures[("PATCH", STABLE)] = (503, "ServiceUnavailable", "apiserver going away")

    cluster.fake.on_request.append(break_stable_after_first_patch)
    with pytest.raises(
        PromoteError, match=r"HALF-SWITCHED.*kubectl -n shop patch service demo --type merge"
    ) as info:
        run_promote(cluster)
    assert info.value.exit_code == EXIT_HALF_SWITCHED


def test_a_concurrent_change_of_the_service_is_not_overwritten(cluster: Cluster) -> None:
    def someone_edits_the_service(fake: FakeKube, record: Recorded) -> None:
        if record.method == "GET" and record.path == STABLE and record.status == 200:
            fake.on_request.remove(someone_edits_the_service)
            fake.update(
                "Service", NS, "demo", lambda s: s["metadata"].setdefault("annotations", {}).update(x="y")
            )

    cluster.fake.on_request.append(someone_edits_the_service)
    with pytest.raises(PromoteError, match=r"not switched: .*HTTP 409 Conflict"):
        run_promote(cluster)
    assert cluster.selector_color() == "blue"


def test_explicit_preview_service_must_exist_and_missing_default_one_is_skipped(cluster: Cluster) -> None:
    with pytest.raises(KubeError, match=r"HTTP 404 NotFound"):
        run_promote(cluster, preview_service="nope")
    assert cluster.fake.patches() == []

    cluster.fake.objects.pop(("Service", NS, "demo-preview"))
    result = run_promote(cluster)
    assert result.services == ["demo"]


def test_a_service_without_the_color_label_is_refused(cluster: Cluster) -> None:
    cluster.fake.update("Service", NS, "demo", lambda s: s["spec"]["selector"].pop("warmgate.dev/color"))
    with pytest.raises(PromoteError, match=r"has no warmgate.dev/color in its selector"):
        run_promote(cluster)


def test_the_token_is_sent(cluster: Cluster) -> None:
    with (
        connect(Connection(server=cluster.url, token="wrong")) as kube,
        pytest.raises(KubeError, match=r"HTTP 401"),
    ):
        promote(kube, options())


def test_pod_problem_names_the_blocking_condition() -> None:
    assert pod_problem(fake_kube.pod("green", 0), "warmgate.dev/warm") is None
    assert pod_problem(fake_kube.pod("green", 0, phase="Pending"), "warmgate.dev/warm") == "phase Pending"
    assert (
        pod_problem(fake_kube.pod("green", 0, warm=False), "warmgate.dev/warm")
        == "Ready=False (ReadinessGatesNotReady)"
    )
    assert "no warmgate.dev/warm condition" in str(
        pod_problem(fake_kube.pod("green", 0, warm=None), "warmgate.dev/warm")
    )
    assert pod_problem(fake_kube.pod("green", 0, warm=None), None) is None


def test_parse_p95_reads_the_summary_quantile() -> None:
    assert parse_p95(fake_kube.metrics_text(0.0125)) == pytest.approx(0.0125)
    assert parse_p95(fake_kube.metrics_text(None)) is None
    assert parse_p95('warmgate_loadtest_latency_seconds{quantile="0.95"} NaN\n') is None


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


def test_cli_promotes_with_a_kubeconfig(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
                "users": [{"name": "ci", "user": {"token": cluster.fake.token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "ci", "namespace": NS}}],
                "current-context": "fake",
            }
        )
    )
    done = warmgate(
        "promote", "-n", NS, "--service", "demo", "--to", "green", "--kubeconfig", str(kubeconfig),
        "--poll-interval", "0.01", "--scale-down-after", "0",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == EXIT_PROMOTED, done.stderr
    assert done.stdout.strip() == "demo: switched blue -> green; scaled down demo-blue-warmgate"
    assert "traffic switched: demo now selects warmgate.dev/color=green" in done.stderr
    assert cluster.selector_color() == "green"
    assert cluster.replicas("blue") == 0


def test_cli_failure_is_one_error_line_and_exit_1(cluster: Cluster, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(str(cluster.fake.token))
    cluster.fake.set_pod_condition(NS, "demo-green-warmgate-0", "warmgate.dev/warm", False)
    done = warmgate(
        "promote", "-n", NS, "--service", "demo", "--to", "green", "--server", cluster.url,
        "--token-file", str(token), "--timeout", "0.2", "--poll-interval", "0.01",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == EXIT_NOT_PROMOTED
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "timed out after 0.2s" in errors[0]
    assert "Traceback" not in done.stderr
    assert cluster.selector_color() == "blue"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], "--timeout: must be > 0"),
        (["--max-p95-regression", "-1"], "--max-p95-regression: must be >= 0"),
        (["--token-file", "/nonexistent/token"], "--token-file: needs --server"),
        (["--server", "http://127.0.0.1:1", "--context", "x"], "either --server or --kubeconfig"),
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = warmgate("promote", "-n", NS, "--service", "demo", "--to", "green", *args, cwd=tmp_path)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_connect_reports_a_missing_kubeconfig_as_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot configure the Kubernetes client"):
        connect(Connection(kubeconfig=tmp_path / "missing"), environ={})


@pytest.mark.parametrize("insecure", [False, True])
def test_insecure_skip_tls_verify_applies_to_a_kubeconfig_too(insecure: bool, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    connection = Connection(kubeconfig=kubeconfig, insecure_skip_tls_verify=insecure)
    with connect(connection, environ={}) as kube:
        assert kube.api_client.configuration.host == "https://127.0.0.1:1"
        assert kube.api_client.configuration.verify_ssl is not insecure
