"""The warm-artifact benchmarks still run: bench/cache_bench.py and bench/scale_out.py --warm-cache
with --smoke complete and write their result structure. No timing is judged here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import require, run_script

pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
def test_cache_bench(tmp_path: Path) -> None:
    document = run_script("cache_bench", "--runtimes", "onnx", tmp_path=tmp_path, timeout=380)
    assert document["bake_s"]["onnx"] > 0
    by_condition = {r["condition"]: r for r in document["records"]}
    assert set(by_condition) == {"empty", "warm", "corrupt", "mismatched"}
    for record in by_condition.values():
        assert record["time_to_ready_s"] > 0 and record["reference_s"] > 0
        assert all(shape["status"] == 200 for shape in record["shapes"].values())
    # What the conditions mean, as the servers logged it: a warm cache is used, a damaged one is
    # one warning and rebuilt, an empty one is filled.
    assert by_condition["warm"]["cache_hits"] >= 1 and by_condition["warm"]["cache_warnings"] == 0
    assert by_condition["corrupt"]["cache_warnings"] == 1 and by_condition["corrupt"]["cache_stored"] >= 1
    assert by_condition["mismatched"]["cache_warnings"] == 1
    assert by_condition["empty"]["cache_hits"] == 0 and by_condition["empty"]["cache_stored"] >= 1
    assert len(document["summary"]) == 4


@pytest.mark.timeout(240)
def test_scale_out_with_a_warm_cache(tmp_path: Path) -> None:
    require(shutil.which("haproxy") is not None, "haproxy", "apt-get install -y haproxy")
    document = run_script("scale_out", "--warm-cache", "--variants", "b", tmp_path=tmp_path, timeout=220)
    [result] = document["results"]
    assert result["warm_cache"] is True and document["settings"]["warm_cache"] is True
    assert set(result["join_to_admitted_s"]) == {"r2", "r3"}
    assert result["requests"] > 0
