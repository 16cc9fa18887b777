"""Every `make bench-*` script runs: each at toy sizes (`--smoke`, the same code paths), ending with its JSON line
and the keys its README figures are read from, so no benchmark can rot unnoticed. The figures mean nothing here;
bench-real, bench-folds, bench-peer and bench-gpu have their own tiny end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

EXPECTED_KEYS = {
    "bench_prep.py": {"barrel_ms", "naive_barrel_ms", "barrel_speedup", "aug_ms_per_tile", "workers2_speedup",
                      "peak_rss_mb_4_images", "peak_rss_mb_12_images"},
    "bench_train.py": {"demo_streamed_step_ms", "demo_in_memory_step_ms", "streamed_vs_memory", "pipeline_headroom",
                       "demo_images_per_s", "reference_params", "reference_cpu_s_per_image", "bench_float32_step_ms",
                       "bench_bfloat16_step_ms", "bench_bfloat16_vs_float32"},
    "bench_infer.py": {"stitched_s", "bare_predict_s", "stitched_vs_bare", "tiles_per_s", "overlap025_vs_overlap0",
                       "tta4_vs_plain", "rss_8192_mb", "seconds_8192", "field_1024_s", "field_1024_old_default_s",
                       "field_1024_whole_tta0_s", "field_1024_tiles_tta4_s"},
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED_KEYS))
def test_bench_script_runs_and_ends_with_its_json_line(script: str):
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), "--smoke"], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert EXPECTED_KEYS[script] <= set(figures), sorted(EXPECTED_KEYS[script] - set(figures))
    numbers = {key: figures[key] for key in EXPECTED_KEYS[script]}
    assert all(isinstance(value, int | float) and value > 0 for value in numbers.values()), numbers
    if script == "bench_train.py":  # what [train] mixed_precision = auto takes on this machine
        assert figures["auto_precision_here"] in {"float32", "mixed_bfloat16", "mixed_float16"}
