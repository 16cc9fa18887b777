from pathlib import Path

import numpy as np
import pytest

from prep.imageio import read_image, read_mask
from prep.tiling import crop, grid, pad_to_grid, tile_name

# EDF100/101/102 in ../shared are mosaics of these tiles (shared/data/edf-real/README.md), row by row.
MOSAICS = {
    "EDF100": ["10001_1x0", "barrdistorted_1003_0.3_0.3_10001_0x0",
               "deformed_alpha_1300_sigmoid_8_10001_0x1", "barrdistorted_1004_0.3_0.3_10002_0x1"],
    "EDF101": ["deformed_alpha_1300_sigmoid_8_10006_0x1", "deformed_alpha_1300_sigmoid_8_10006_1x1",
               "10007_1x0", "deformed_alpha_1300_sigmoid_8_10009_0x0"],
    "EDF102": ["barrdistorted_1001_0.3_0.3_10007_1x0", "barrdistorted_1003_0.3_0.3_10010_0x1",
               "deformed_alpha_1300_sigmoid_10_10010_1x0"],
}


@pytest.mark.parametrize("source", sorted(MOSAICS))
def test_tiling_real_mosaic_gives_back_the_tiles_pixel_for_pixel(real_data: Path, source: str):
    image = read_image(real_data / "isbi" / "EDF" / f"{source}.png")
    mask = read_mask(real_data / "isbi" / "EDF" / f"{source}_GT.png")
    tiles = grid(*mask.shape, 512)
    assert len(tiles) == len(MOSAICS[source])
    for tile, expected in zip(tiles, MOSAICS[source], strict=True):
        np.testing.assert_array_equal(crop(pad_to_grid(image, 512), tile, 512),
                                      read_image(real_data / "tiles" / "images" / f"{expected}.png"))
        np.testing.assert_array_equal(crop(pad_to_grid(mask, 512), tile, 512),
                                      read_mask(real_data / "tiles" / "masks" / f"{expected}.png"))


def test_grid_covers_image_without_gaps():
    tiles = grid(901, 700, 256)
    assert (max(t.row for t in tiles) + 1, max(t.col for t in tiles) + 1) == (4, 3)
    assert [(t.y, t.x) for t in tiles[:4]] == [(0, 0), (0, 256), (0, 512), (256, 0)]
    covered = np.zeros((901, 700), bool)
    padded = pad_to_grid(covered, 256)
    for t in tiles:
        crop(padded, t, 256)[:] = True
    assert padded[:901, :700].all()


@pytest.mark.parametrize("shape", [(300, 200), (512, 512), (513, 1030), (40, 7), (1, 1)])
def test_pad_keeps_pixels_and_reaches_a_multiple(shape):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    padded = pad_to_grid(image, 128)
    assert padded.shape[0] % 128 == 0 and padded.shape[1] % 128 == 0
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)


def test_padding_reflects_instead_of_black():
    image = np.full((100, 100, 3), 200, np.uint8)
    assert pad_to_grid(image, 128).min() == 200


def test_bad_tile_size_is_refused():
    with pytest.raises(ValueError, match="tile size"):
        grid(10, 10, 0)


def test_tile_name_follows_reference_convention():
    assert tile_name("EDF007", grid(1024, 1024, 512)[2]) == "EDF007_1x0"
