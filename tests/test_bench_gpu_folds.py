"""bench/bench_gpu_folds.py: the fold plan is bench-folds' own, crops keep image and mask together, the model specs
are checked before anything trains, and the whole script runs (here on the CPU, tiny) to its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from bench_gpu_folds import PALE_FACTORS, parse_model_spec, sample_crop  # noqa: E402
from bench_real import DEFAULT_PREP_FLAGS  # noqa: E402
from make_folds import field_fold_plan  # noqa: E402

DEMO_CONFIG = REPO / "configs" / "demo_cpu.config"


def test_the_pale_copies_are_bench_reals():
    factors = DEFAULT_PREP_FLAGS[DEFAULT_PREP_FLAGS.index("--fade-factors") + 1]
    assert tuple(float(f) for f in factors.split(",")) == PALE_FACTORS


def test_fold_plan_holds_each_field_out_once_and_never_trains_on_it():
    names = [f"EDF{i:03d}" for i in (0, 1, 2, 3, 4, 5, 9, 10, 12, 13)]
    plan = field_fold_plan(names[::-1], 5)  # the order given does not matter
    assert plan[0]["test_sources"] == ["EDF000", "EDF005"]
    held_out = [name for fold in plan for name in fold["test_sources"]]
    assert sorted(held_out) == names
    for fold in plan:
        assert not set(fold["test_sources"]) & set(fold["train_sources"])
        assert len(fold["train_sources"]) == 8
    with pytest.raises(ValueError, match="3 fields cannot make 5 folds"):
        field_fold_plan(names[:3], 5)


def test_a_crop_keeps_its_mask_on_the_same_pixels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (200, 300), dtype=np.uint8)
    nucleus = np.zeros((200, 300), bool)
    nucleus[50:70, 100:130] = True
    image[nucleus] = 0  # the nucleus is the only black
    image[~nucleus] = np.maximum(image[~nucleus], 1)
    for seed in range(20):
        crop, mask = sample_crop(image, nucleus, np.random.default_rng(seed), (64, 64), foreground_bias=1.0,
                                 flips=True, quarter_turns=True)
        assert crop.shape == (64, 64) and mask.shape == (64, 64) and mask.any()  # centred on a nucleus pixel
        np.testing.assert_array_equal(crop == 0, mask)
    # zoomed crops: same size, the mask still on the dark pixels (nearest-neighbour mask, linear image)
    crop, mask = sample_crop(image, nucleus, np.random.default_rng(3), (64, 64), foreground_bias=1.0,
                             random_scale=0.5)
    assert crop.shape == (64, 64) and mask.any() and crop[mask].mean() < 40 < crop[~mask].mean()
    # a field smaller than the crop is mirrored, not padded with black
    crop, mask = sample_crop(image[:40, :40], nucleus[:40, :40], rng, (64, 64))
    assert crop.shape == (64, 64) and crop.min() > 0


def test_model_specs_are_checked_and_name_the_problem(tmp_path):
    spec = parse_model_spec(f"{DEMO_CONFIG} steps=20 train.batch_size=4")
    assert (spec.steps, spec.seconds, spec.overrides) == (20, None, ("train.batch_size=4",))
    assert spec.name == "demo_cpu steps=20 train.batch_size=4"
    assert parse_model_spec(f"{DEMO_CONFIG} seconds=60").seconds == 60.0
    assert parse_model_spec(f"{DEMO_CONFIG} seconds=60 folds=2,0").folds == (0, 2)
    for text, message in [(f"{DEMO_CONFIG}", "one budget"), (f"{DEMO_CONFIG} steps=5 seconds=6", "one budget"),
                          (f"{DEMO_CONFIG} steps=0", "positive"), (f"{DEMO_CONFIG} steps=x", "'steps=x'"),
                          (f"{DEMO_CONFIG} speed=3", "unknown key 'speed'"),
                          (f"{DEMO_CONFIG} steps=3 folds=a", "'folds=a'"),
                          (f"{tmp_path / 'no.config'} steps=3", "is not a file"), ("", "expected a config")]:
        with pytest.raises(ValueError, match=message):
            parse_model_spec(text)


def write_fields(folder, count=4, size=128):
    """ISBI-layout fields: grey noise with dark disks, their GT filled (0/255)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(150, 230, (size, size), dtype=np.uint8)
        truth = np.zeros((size, size), np.uint8)
        for _ in range(4):
            centre = tuple(int(v) for v in rng.integers(20, size - 20, 2))
            cv2.circle(truth, centre, 8, 255, -1)
        image[truth > 0] = 60
        cv2.imwrite(str(folder / f"EDF{i:03d}.png"), image)
        cv2.imwrite(str(folder / f"EDF{i:03d}_GT.png"), truth)
    return folder


def test_the_script_trains_every_fold_and_ends_with_one_json_line(tmp_path):
    fields = write_fields(tmp_path / "fields")
    out = tmp_path / "rows.jsonl"
    spec = f"{DEMO_CONFIG} steps=4 train.steps_per_epoch=2 train.batch_size=2 train.crop_size=(64,64)"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_folds.py"), "--fields", str(fields),
                             "--model", spec, "--model", f"{DEMO_CONFIG} steps=2 folds=1 train.crop_size=(64,64)",
                             "--folds", "2", "--precision", "float32", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    model = summary["models"]["demo_cpu steps=4 train.steps_per_epoch=2 train.batch_size=2 train.crop_size=(64,64)"]
    assert model["folds"] == 2 and [run["steps"] for run in model["runs"]] == [4, 4]
    held_out = [name for run in model["runs"] for name in run["fields"]]
    assert sorted(held_out) == ["EDF000", "EDF001", "EDF002", "EDF003"]  # each field scored once, in its fold
    assert 0.0 <= model["nucleus_dice"] <= 1.0 and model["train_images_per_s"] > 0
    second = summary["models"]["demo_cpu steps=2 train.crop_size=(64,64)"]  # folds=1: that fold alone
    assert [run["fold"] for run in second["runs"]] == [1] and second["runs"][0]["steps"] == 40  # one whole epoch
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["fold"] for row in rows] == [0, 1, 1] and rows[0]["fields"] == model["runs"][0]["fields"]
    again = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_folds.py"), "--fields", str(fields),
                            "--model", spec, "--folds", "2", "--out", str(out)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode != 0 and "exists" in again.stderr  # never appends to an earlier run's rows


def test_a_bad_model_spec_stops_before_anything_trains(tmp_path):
    fields = write_fields(tmp_path / "fields", count=2)
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_folds.py"), "--fields", str(fields),
                             "--model", f"{DEMO_CONFIG} steps=4", "--model", f"{DEMO_CONFIG} steps=4 train.nope=1",
                             "--folds", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "nope" in result.stderr and "trained" not in result.stdout
    too_many = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_folds.py"), "--fields", str(fields),
                               "--model", f"{DEMO_CONFIG} steps=4"], capture_output=True, text=True, timeout=120)
    assert too_many.returncode == 2 and f"--fields {fields}: 2 fields cannot make 5 folds (--folds)" in too_many.stderr
    bad_only = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_folds.py"), "--fields", str(fields),
                               "--folds", "2", "--only", "0,x", "--model", f"{DEMO_CONFIG} steps=4"],
                              capture_output=True, text=True, timeout=120)
    assert bad_only.returncode == 2 and "--only '0,x': expected fold numbers" in bad_only.stderr
    no_fold = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_folds.py"), "--fields", str(fields),
                              "--folds", "2", "--model", f"{DEMO_CONFIG} steps=4 folds=0,7"],
                             capture_output=True, text=True, timeout=120)
    assert no_fold.returncode == 2 and "folds are 0-1" in no_fold.stderr
