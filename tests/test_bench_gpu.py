"""bench/bench_gpu.py: the batch it trains on is the tiles' own pixels and classes, bad masks stop with the file,
and the whole script runs (here on the CPU, with a tiny model) to its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import REPO
from train.config import load_config

sys.path.insert(0, str(REPO / "bench"))

from bench_gpu import load_batch  # noqa: E402

GREY_CONFIG = REPO / "configs" / "demo_cpu.config"  # 1 channel, rgb_map {(0,0,0): 0, (255,255,255): 1}


def write_tiles(root, count=2, size=96, bad_colour=None):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image = rng.integers(0, 256, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size, 3), np.uint8)
        mask[10 + i:30 + i, 40:60] = 255
        if bad_colour is not None:
            mask[size // 2, size // 2] = bad_colour  # inside the centre crop
        cv2.imwrite(str(root / "images" / f"t{i}.png"), image)
        cv2.imwrite(str(root / "masks" / f"t{i}.png"), mask)
    return root


def test_batch_is_the_centre_crop_of_the_tiles_with_one_hot_masks(tmp_path):
    tiles = write_tiles(tmp_path / "tiles")
    x, y = load_batch(tiles, 3, (64, 64), load_config(GREY_CONFIG))
    assert x.shape == (3, 64, 64, 1) and y.shape == (3, 64, 64, 2)
    image = cv2.imread(str(tiles / "images" / "t0.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_allclose(x[0, ..., 0], image[16:80, 16:80] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(x[2], x[0])  # fewer tiles than the batch: repeated in order
    expected = np.zeros((64, 64), bool)
    expected[0:30 - 16, 40 - 16:60 - 16] = True  # rows 10–29 and columns 40–59, shifted by the crop at 16
    np.testing.assert_array_equal(y[0, ..., 1].astype(bool), expected)
    np.testing.assert_array_equal(y.sum(-1), 1.0)


def test_mask_colour_outside_rgb_map_names_the_file(tmp_path):
    tiles = write_tiles(tmp_path / "tiles", bad_colour=(0, 0, 128))
    with pytest.raises(SystemExit, match="t0.png"):
        load_batch(tiles, 1, (64, 64), load_config(GREY_CONFIG))


def test_script_runs_end_to_end_and_the_model_learns(tmp_path):
    tiles = write_tiles(tmp_path / "tiles")
    out = tmp_path / "rows.jsonl"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--config", str(REPO / "configs" / "demo_cpu.config"),
         "--tiles", str(tiles), "--size", "64", "--batch-sizes", "2", "--precisions", "float32", "--steps", "2",
         "--rounds", "2", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    (row,) = summary["rows"]
    assert "error" not in row, row
    assert row["batch_size"] == 2 and row["image_size"] == [64, 64]
    assert row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0
    assert row["learns"] and np.isfinite(row["loss_last"])
    assert json.loads(out.read_text().splitlines()[0]) == row  # the JSON-lines copy holds the same row
