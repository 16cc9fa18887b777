"""`make demo` end to end, as a newcomer runs it, on a tiny budget: every result it lists exists and is sane."""

from __future__ import annotations

import csv
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

VENV = Path(sys.prefix)
TINY_BUDGET = ("--set train.epochs=2 --set train.steps_per_epoch=3 --set train.validation_steps=1 "
               "--set train.max_train_seconds=60")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(not (VENV / ".installed").is_file(),
                    reason="runs inside the venv `make setup` made (run the suite with `make test`)")
def test_make_demo_runs_end_to_end_and_lists_files_that_exist(tmp_path: Path):
    sample, demo = tmp_path / "sample" / "EDF", tmp_path / "demo-output"
    # -o: never reinstall the venv from here; under xdist the other worker is running tests from it.
    command = ["make", "--no-print-directory", "-C", str(REPO), "-o", str(VENV / ".installed"), "demo",
               f"VENV={VENV}", f"SAMPLE_DIR={sample}",
               f"DEMO_DIR={demo}", "SYNTH_FLAGS=--count 6 --size 512 --no-progress",
               "PREP_FLAGS=--no-progress", f"DEMO_FLAGS={TINY_BUDGET}", "INFER_FLAGS=--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    listed = result.stdout[result.stdout.index("demo results:"):]
    # Every concrete path the closing list names (not the EDFnnn / NNN patterns) is there.
    named = [path for path in re.findall(r"(/\S+?\.(?:png|csv|json|h5))\b", listed)
             if "nnn" not in path and "NNN" not in path]
    assert len(named) >= 7, listed  # the lines that spell a whole path (the rest name files beside them)
    for path in named:
        assert Path(path).is_file(), path
    assert sorted(sample.glob("SYN*_GT.png")) and (demo / "dataset" / "manifest.csv").is_file()
    assert list((demo / "epoch_change_infer").glob("epoch_*.png"))

    with (demo / "infer" / "scores.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pooled = next(row for row in rows if row["file"] == "POOLED")
    assert len(rows) >= 2 and math.isfinite(float(pooled["mean_nucleus_dice"]))
    test_sources = {Path(row["file"]).stem for row in rows if row["file"] != "POOLED"}
    with (demo / "dataset" / "manifest.csv").open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    train_sources = {row["source"] for row in manifest if row["split"] == "train"}
    assert test_sources and not test_sources & {Path(s).stem for s in train_sources}  # predicted sources unseen
    assert len(list((demo / "infer" / "overlays").glob("*.png"))) == len(test_sources)

    # The closing command predicts one's own folder with the model just trained, as printed.
    printed = next(line.strip() for line in listed.splitlines() if "--model" in line)
    own = tmp_path / "my-fields"
    own.mkdir()
    shutil.copyfile(sample / "SYN000.png", own / "field.png")
    command = printed.replace("YOUR_FOLDER", str(own)).replace("YOUR_OUTPUT", str(tmp_path / "mine")).split()
    mine = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300)
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert (tmp_path / "mine" / "field.png").is_file() and (tmp_path / "mine" / "geojson" / "field.geojson").is_file()
