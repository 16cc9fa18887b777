"""The synthetic EDF generator: deterministic, exact binary masks, plausible nucleus statistics."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from prep.synth import synth_field, write_sample


def _field(seed: int, size: int | tuple[int, int] = 1024) -> tuple[np.ndarray, np.ndarray]:
    return synth_field(size, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def fields() -> list[tuple[np.ndarray, np.ndarray]]:
    return [_field(seed) for seed in range(4)]


def test_same_seed_gives_identical_bytes() -> None:
    image_a, mask_a = _field(7, 512)
    image_b, mask_b = _field(7, 512)
    assert image_a.tobytes() == image_b.tobytes()
    assert mask_a.tobytes() == mask_b.tobytes()


def test_different_seeds_differ() -> None:
    image_a, mask_a = _field(1, 512)
    image_b, mask_b = _field(2, 512)
    assert not np.array_equal(image_a, image_b)
    assert not np.array_equal(mask_a, mask_b)


def test_image_and_mask_types(fields) -> None:
    for image, mask in fields:
        assert image.shape == (1024, 1024, 3) and image.dtype == np.uint8
        assert mask.shape == (1024, 1024) and mask.dtype == bool
        # grey content stored as RGB: three identical channels
        assert np.array_equal(image[..., 0], image[..., 1])
        assert np.array_equal(image[..., 1], image[..., 2])


def test_nucleus_fraction_is_like_real_tiles(fields) -> None:
    for _, mask in fields:
        assert 0.003 <= mask.mean() <= 0.04


def test_nuclei_are_darker_than_everything_else(fields) -> None:
    for image, mask in fields:
        grey = image[..., 0].astype(float)
        assert grey[mask].mean() < grey[~mask].mean() - 50
        # ... and darker than the cytoplasm right around them, not just darker than the background
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
        assert grey[mask].mean() < grey[ring].mean() - 20


def test_nucleus_sizes_are_plausible(fields) -> None:
    diameters = []
    for _, mask in fields:
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        assert 15 <= count - 1 <= 80
        diameters.extend(np.sqrt(4 * stats[1:, cv2.CC_STAT_AREA] / np.pi))
    assert 16 <= np.median(diameters) <= 34


def test_non_square_small_size() -> None:
    image, mask = _field(3, (300, 200))
    assert image.shape == (300, 200, 3) and image.dtype == np.uint8
    assert mask.shape == (300, 200) and mask.dtype == bool
    # mostly light background, as in a real field
    assert 190 <= np.median(image) <= 245


def test_write_sample(tmp_path: Path) -> None:
    out = tmp_path / "EDF"
    paths = write_sample(out, count=2, size=256, seed=5, progress=False)
    assert paths == [out / "SYN000.png", out / "SYN001.png"]
    expected = ["SYN000.png", "SYN000_GT.png", "SYN001.png", "SYN001_GT.png"]
    assert sorted(p.name for p in out.iterdir()) == expected
    nucleus_pixels = 0
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(path.with_name(path.stem + "_GT.png")), cv2.IMREAD_UNCHANGED)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert gt.shape == (256, 256, 3) and gt.dtype == np.uint8
        assert set(np.unique(gt)) <= {0, 255}
        assert np.array_equal(gt[..., 0], gt[..., 1]) and np.array_equal(gt[..., 1], gt[..., 2])
        nucleus_pixels += int((gt[..., 0] == 255).sum())
    assert nucleus_pixels > 0


def test_write_sample_image_does_not_depend_on_count(tmp_path: Path) -> None:
    write_sample(tmp_path / "a", count=1, size=96, seed=11, progress=False)
    write_sample(tmp_path / "b", count=3, size=96, seed=11, progress=False)
    for name in ("SYN000.png", "SYN000_GT.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_written_pair_matches_core(tmp_path: Path) -> None:
    (path,) = write_sample(tmp_path, count=1, size=64, seed=3, progress=False)
    image, mask = synth_field(64, np.random.default_rng(np.random.SeedSequence([3, 0])))
    written = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    gt = cv2.imread(str(tmp_path / "SYN000_GT.png"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(written, image)
    assert np.array_equal(gt == 255, mask)


@pytest.mark.parametrize(("count", "size"), [(0, 64), (-1, 64), (2, 31), (2, 0)])
def test_bad_arguments_raise(tmp_path: Path, count: int, size: int) -> None:
    with pytest.raises(ValueError, match="count|size"):
        write_sample(tmp_path, count=count, size=size, progress=False)
