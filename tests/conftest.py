"""Shared fixtures: small generated EDF-layout inputs, the real tiles in ../shared (skipped when absent)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "edf-real"


@pytest.fixture
def real_data() -> Path:
    if not (REAL / "tiles" / "images").is_dir():
        pytest.skip("../shared/data/edf-real is not available")
    return REAL


def random_pair(rng: np.random.Generator, height: int, width: int, nuclei: int = 6):
    """A grey RGB image with dark discs and the matching 0/255 GT (3-channel), as in the ISBI layout."""
    image = rng.integers(170, 230, (height, width), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(nuclei):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(6, 14))
        cv2.circle(mask, centre, radius, 255, -1)
    image[mask > 0] = 60
    return np.dstack([image] * 3), np.dstack([mask] * 3)


def mat_cells(arrays) -> np.ndarray:
    """A MATLAB cell array (N×1 of objects), as scipy.io.savemat writes one."""
    cells = np.empty((len(arrays), 1), dtype=object)
    for i, array in enumerate(arrays):
        cells[i, 0] = array
    return cells


def write_edf_folder(folder: Path, count: int = 3, height: int = 600, width: int = 700, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, mask = random_pair(rng, height, width)
        cv2.imwrite(str(folder / f"EDF{index:03d}.png"), image)
        cv2.imwrite(str(folder / f"EDF{index:03d}_GT.png"), mask)
    return folder


@pytest.fixture
def edf_folder(tmp_path: Path) -> Path:
    return write_edf_folder(tmp_path / "EDF")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared dataset of 64² tiles from four small synthetic fields: what the training tests fit on."""
    from click.testing import CliRunner

    from prep.cli import cli as prep_cli

    root = tmp_path_factory.mktemp("tiny")
    edf = write_edf_folder(root / "EDF", count=4, height=128, width=128, seed=5)
    result = CliRunner().invoke(prep_cli, ["run", "--input", str(edf), "--output", str(root / "data"),
                                           "--tile-size", "64", "--split", "0.5,0.25,0.25", "--no-progress",
                                           "--rotations", "90", "--elastic-sigmas", "", "--distortion-sizes", "",
                                           "--barrel-amounts", "", "--pincushion-amounts", ""])
    assert result.exit_code == 0, result.output
    return root / "data"


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }
