"""train.data: streaming tf.data pipeline over prep tiles (shapes, rgb_map, crops, seeds, errors, laziness)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import random_pair
from train.data import (
    DataError,
    _mask_to_labels,
    check_masks,
    check_sizes,
    dataset_size,
    list_pairs,
    make_dataset,
)
from train.windows import cut_window, orientations

RGB_MAP = {(0, 0, 0): 0, (255, 255, 255): 1}
SIZE = 64


def write_tiles(root: Path, count: int = 4, size: int = SIZE, seed: int = 0, suffix: str = ".png") -> Path:
    """``root/images`` and ``root/masks``: grey RGB tiles with dark discs and their 0/255 masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask = random_pair(rng, size, size, nuclei=3)
        cv2.imwrite(str(root / "images" / f"tile_{index:03d}{suffix}"), image)
        cv2.imwrite(str(root / "masks" / f"tile_{index:03d}{suffix}"), mask)
    return root


def first_batch(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, masks = next(iter(dataset))
    return images.numpy(), masks.numpy()


def pairs(root: Path, section: str = "train") -> tuple[list[str], list[str]]:
    return list_pairs(root / "images", root / "masks", section=section)


def test_shapes_dtypes_ranges_and_one_hot(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=5))
    assert dataset_size(images) == 5
    dataset = make_dataset(images, masks, RGB_MAP, num_classes=2, image_size=(SIZE, SIZE), batch_size=2)
    assert dataset.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]  # static H, W, C: Keras can build
    assert dataset.element_spec[1].shape.as_list() == [None, SIZE, SIZE, 2]
    batches = list(dataset)
    assert [len(batch[0]) for batch in batches] == [2, 2, 1]
    image, mask = batches[0][0].numpy(), batches[0][1].numpy()
    assert image.dtype == np.float32 and mask.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
    np.testing.assert_array_equal(mask.sum(axis=-1), 1.0)
    assert set(np.unique(mask)) == {0.0, 1.0}


def test_white_is_class_one_and_pixels_are_exact(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=2))
    image, mask = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE)))
    for index in range(2):
        expected_mask = cv2.imread(masks[index], cv2.IMREAD_GRAYSCALE) == 255
        assert expected_mask.any()
        np.testing.assert_array_equal(mask[index, :, :, 1] == 1.0, expected_mask)
        expected_image = cv2.cvtColor(cv2.imread(images[index]), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(np.rint(image[index] * 255).astype(np.uint8), expected_image)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_grey_model_sees_a_colour_tile_as_infer_does(tmp_path: Path, suffix: str):
    from infer.run import model_input
    from train.config import load_config

    root = write_tiles(tmp_path, count=1, suffix=suffix)
    images, masks = list_pairs(root / "images", root / "masks", suffix)
    colour = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    cv2.imwrite(images[0], colour[:, :, ::-1])
    image, _ = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), image_channels=1))
    config_path = tmp_path / "grey.config"
    config_path.write_text("[model]\nimage_channels = 1\nimage_width = 64\nimage_height = 64\nnum_layers = 3\n")
    expected = model_input(colour, load_config(config_path))
    assert expected.shape == (SIZE, SIZE, 1) and len(np.unique(expected)) > 100  # a real colour-to-grey
    np.testing.assert_array_equal(np.rint(image[0] * 255).astype(np.uint8), expected)


def test_coloured_multi_class_masks_map_each_colour_to_its_class(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=1))
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[:20] = (255, 255, 255)
    rgb[40:, :30] = (200, 30, 10)
    cv2.imwrite(masks[0], rgb[:, :, ::-1])
    colour_map = {(0, 0, 0): 0, (255, 255, 255): 1, (200, 30, 10): 2}
    _, one_hot = first_batch(make_dataset(images, masks, colour_map, 3, (SIZE, SIZE)))
    expected = np.zeros((SIZE, SIZE), int)
    expected[:20], expected[40:, :30] = 1, 2
    np.testing.assert_array_equal(one_hot[0].argmax(-1), expected)


def write_position_tiles(root: Path, count: int = 3) -> tuple[list[str], list[str], np.ndarray]:
    """Each pixel's colour encodes its (y, x); the mask is a fixed irregular pattern, so a window is recognisable."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    image_rgb = np.dstack([ys * 4, xs * 4, np.full_like(ys, 100)]).astype(np.uint8)
    pattern = ((ys * 7 + xs * 3) % 11 < 4).astype(np.uint8) * 255
    for index in range(count):
        cv2.imwrite(str(root / "images" / f"p{index}.png"), image_rgb[:, :, ::-1])
        cv2.imwrite(str(root / "masks" / f"p{index}.png"), np.dstack([pattern] * 3))
    images, masks = pairs(root)
    return images, masks, pattern > 0


def test_crop_and_flip_use_one_window_for_image_and_mask(tmp_path: Path):
    images, masks, pattern = write_position_tiles(tmp_path)
    dataset = make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=3, crop_size=(16, 24),
                           random_flips=True, repeat=True)
    corners, flips = set(), set()
    for image, mask in dataset.take(6).as_numpy_iterator():
        assert image.shape == (3, 16, 24, 3) and mask.shape == (3, 16, 24, 2)
        for tile_image, tile_mask in zip(image, mask, strict=True):
            ys = np.rint(tile_image[:, :, 0] * 255 / 4).astype(int)
            xs = np.rint(tile_image[:, :, 1] * 255 / 4).astype(int)
            np.testing.assert_array_equal(tile_mask[:, :, 1] == 1.0, pattern[ys, xs])
            corners.add((ys.min(), xs.min()))
            flips.add((ys[0, 0] > ys[-1, 0], xs[0, 0] > xs[0, -1]))
    assert len(corners) > 5 and len(flips) == 4  # windows and flips vary


def test_quarter_turns_and_flips_give_all_eight_symmetries_with_the_mask_following(tmp_path: Path):
    images, masks, pattern = write_position_tiles(tmp_path)
    dataset = make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=3, crop_size=(24, 24),
                           random_flips=True, random_rotations=True, repeat=True)
    orientations = set()
    for image, mask in dataset.take(30).as_numpy_iterator():
        for tile_image, tile_mask in zip(image, mask, strict=True):
            ys = np.rint(tile_image[:, :, 0] * 255 / 4).astype(int)
            xs = np.rint(tile_image[:, :, 1] * 255 / 4).astype(int)
            np.testing.assert_array_equal(tile_mask[:, :, 1] == 1.0, pattern[ys, xs])
            # Where the source's y grows (down the window or across it) and in which sense x grows.
            y_runs_down = ys[0, 0] != ys[-1, 0]
            orientations.add((y_runs_down, int(np.sign(ys[-1, -1] - ys[0, 0])), int(np.sign(xs[-1, -1] - xs[0, 0]))))
    assert len(orientations) == 8


@pytest.mark.parametrize("turns", range(4))
@pytest.mark.parametrize(("flip_v", "flip_h"), [(False, False), (True, False), (False, True), (True, True)])
def test_a_window_is_flipped_then_turned_like_numpy(flip_v: bool, flip_h: bool, turns: int):
    # The pipeline folds "flip, then turn by k quarters" into (flip rows?, flip columns?, transpose?) per window.
    rng = np.random.default_rng(turns)
    image = rng.integers(0, 256, (20, 20, 2), dtype=np.uint8)
    labels = rng.integers(0, 3, (20, 20)).astype(np.int32)
    uniforms = np.full((1, 11), 0.9, np.float32)
    uniforms[0, 4], uniforms[0, 5] = (0.25 if flip_v else 0.75), (0.25 if flip_h else 0.75)  # < 0.5 flips
    uniforms[0, 6] = (turns + 0.5) / 4
    flip_rows, flip_columns, transpose = orientations(tf.constant(uniforms), True, True)
    window_image, window_labels = cut_window(tf.constant(image), tf.constant(labels), tf.constant([3, 5]),
                                          tf.constant([8, 8]), None, flip_rows[0], flip_columns[0], transpose[0])

    def expected(array: np.ndarray) -> np.ndarray:
        window = array[3:11, 5:13]
        window = window[::-1] if flip_v else window
        window = window[:, ::-1] if flip_h else window
        turned = tf.image.rot90(window if window.ndim == 3 else window[:, :, None], turns).numpy()
        return turned if window.ndim == 3 else turned[:, :, 0]

    np.testing.assert_array_equal(window_image.numpy(), expected(image))
    np.testing.assert_array_equal(window_labels.numpy(), expected(labels))


@pytest.mark.parametrize(("mask", "keys", "classes", "expected"), [
    (np.array([[0, 255], [255, 0]]), [0, 255], [0, 1], [[0, 1], [1, 0]]),
    (np.array([[0, 7], [255, 0]]), [0, 255], [0, 1], "grey value 7 is not in"),
    (np.array([[255, 128], [0, 0]]), [0, 128, 255], [2, 0, 1], [[1, 0], [2, 2]]),
])
def test_mask_values_map_to_classes_or_name_the_value(mask, keys, classes, expected):
    tensor = tf.constant(mask.astype(np.uint8)[:, :, None])
    run = lambda: _mask_to_labels(tensor, tf.constant("m.png"), keys, classes, "{…}").numpy()  # noqa: E731
    if isinstance(expected, str):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"mask m.png: {expected}"):
            run()
    else:
        np.testing.assert_array_equal(run(), expected)


@pytest.mark.parametrize("unknown", [(0, 0, 0), (1, 0, 0), (255, 255, 255)])  # below, between, above
def test_rgb_mask_lookup_catches_values_between_below_and_above_the_keys(unknown):
    colours = [(0, 0, 1), (200, 30, 10), (255, 255, 254)]
    keys = [r * 65536 + g * 256 + b for r, g, b in colours]
    mask = np.array([[colours[2], colours[0]], [colours[1], colours[0]]], np.uint8)
    known = _mask_to_labels(tf.constant(mask), tf.constant("m.png"), keys, [1, 2, 0], "{…}")
    np.testing.assert_array_equal(known.numpy(), [[0, 1], [2, 1]])
    mask[1, 1] = unknown
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"value \({},{},{}\) is not in".format(*unknown)):
        _mask_to_labels(tf.constant(mask), tf.constant("m.png"), keys, [1, 2, 0], "{…}")


def test_rotations_need_square_windows(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path))
    with pytest.raises(DataError, match=r"\[train\] random_rotations: needs square windows, got 16×24"):
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), crop_size=(16, 24), random_rotations=True)


def test_intensity_jitter_changes_grey_levels_monotonically_and_leaves_the_mask(tmp_path: Path):
    images, masks, _ = write_position_tiles(tmp_path)
    options = {"batch_size": 3, "crop_size": (32, 32), "seed": 5}
    plain_images, plain_masks = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), **options))
    jittered, jittered_masks = first_batch(
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), intensity_jitter=0.5, **options))
    np.testing.assert_array_equal(jittered_masks, plain_masks)  # same windows, mask untouched
    assert jittered.min() >= 0.0 and jittered.max() <= 1.0
    assert np.abs(jittered - plain_images).mean() > 0.01
    for before, after in zip(plain_images, jittered, strict=True):
        # One increasing map per window (gamma, contrast, brightness): grey-level order survives, up to clipping.
        order = np.argsort(before[:, :, 1].ravel(), kind="stable")
        assert np.all(np.diff(after[:, :, 1].ravel()[order]) >= -1e-6)
    with pytest.raises(DataError, match=r"\[train\] intensity_jitter = 1.5"):
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), intensity_jitter=1.5)


def test_random_blur_softens_windows_and_leaves_the_mask(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path))  # noisy tiles: every window has detail to lose
    options = {"batch_size": 4, "crop_size": (32, 32), "seed": 5, "crops_per_tile": 2}
    plain_images, plain_masks = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), **options))
    blurred, blurred_masks = first_batch(
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), random_blur=2.0, **options))
    np.testing.assert_array_equal(blurred_masks, plain_masks)  # same windows, mask untouched
    assert blurred.min() >= 0.0 and blurred.max() <= 1.0

    def roughness(batch: np.ndarray) -> np.ndarray:  # mean |difference| between neighbouring pixels, per window
        return np.abs(np.diff(batch, axis=1)).mean(axis=(1, 2, 3)) + np.abs(np.diff(batch, axis=2)).mean(axis=(1, 2, 3))

    assert np.all(roughness(blurred) <= roughness(plain_images) + 1e-6)
    assert roughness(blurred).sum() < 0.9 * roughness(plain_images).sum()
    # A normalised kernel with reflected borders keeps each window's mean grey level.
    np.testing.assert_allclose(blurred.mean(axis=(1, 2)), plain_images.mean(axis=(1, 2)), atol=0.02)
    again, _ = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), random_blur=2.0, **options))
    np.testing.assert_array_equal(again, blurred)  # seeded: the same blur each time
    with pytest.raises(DataError, match=r"\[train\] random_blur = 5"):
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), random_blur=5.0)
    with pytest.raises(DataError, match=r"\[train\] random_blur = 3.0: windows of 8×8 are too small"):
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), crop_size=(8, 8), random_blur=3.0)


def test_gaussian_blur_matches_opencv_percut_window():
    from train.windows import gaussian_blur

    windows = np.random.default_rng(0).random((3, 40, 40, 2)).astype(np.float32)
    blurred = gaussian_blur(tf.constant(windows), tf.constant([0.0, 1.0, 2.5]), 3.0).numpy()
    np.testing.assert_array_equal(blurred[0], windows[0])  # sigma 0: untouched
    for k, sigma in ((1, 1.0), (2, 2.5)):
        for c in range(2):
            expected = cv2.GaussianBlur(windows[k, :, :, c], (19, 19), sigma, borderType=cv2.BORDER_REFLECT_101)
            np.testing.assert_allclose(blurred[k, :, :, c], expected, atol=1e-4)


def test_random_scale_zooms_windows_with_the_mask_following(tmp_path: Path):
    images, masks, pattern = write_position_tiles(tmp_path)
    dataset = make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=4, crop_size=(16, 16),
                           random_scale=0.5, seed=2, repeat=True)
    spans, agreement = [], []
    for image, mask in dataset.take(10).as_numpy_iterator():
        assert image.shape == (4, 16, 16, 3) and mask.shape == (4, 16, 16, 2)
        assert set(np.unique(mask)) <= {0.0, 1.0}  # nearest-neighbour labels: still one-hot
        for tile_image, tile_mask in zip(image, mask, strict=True):
            ys = np.clip(np.rint(tile_image[:, :, 0] * 255 / 4).astype(int), 0, SIZE - 1)
            xs = np.clip(np.rint(tile_image[:, :, 1] * 255 / 4).astype(int), 0, SIZE - 1)
            spans.append(ys[-1, 0] - ys[0, 0] + 1)  # source rows the 16-pixel window covers
            agreement.append(np.mean((tile_mask[:, :, 1] == 1.0) == pattern[ys, xs]))
    # Factors in [1/1.5, 1.5]: windows of about 11 to 24 source pixels, both zoomed in and out.
    assert min(spans) >= 10 and max(spans) <= 25
    assert min(spans) <= 13 and max(spans) >= 20
    assert np.mean(agreement) > 0.97  # image and mask are zoomed as one (pixels on a rounding tie may differ)
    with pytest.raises(DataError, match=r"\[train\] random_scale = 1.0"):
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), crop_size=(16, 16), random_scale=1.0)
    with pytest.raises(DataError, match=r"\[train\] random_scale: needs a crop_size"):
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), random_scale=0.2)


def test_several_crops_per_decoded_tile(tmp_path: Path):
    images, masks, pattern = write_position_tiles(tmp_path)
    one = make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=4, crop_size=(16, 16), seed=3)
    many = make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=4, crop_size=(16, 16), seed=3,
                        crops_per_tile=5, shuffle=True, random_flips=True)
    assert sum(b[0].shape[0] for b in one) * 5 == sum(b[0].shape[0] for b in many)
    corners = set()
    for image, mask in many.as_numpy_iterator():
        for tile_image, tile_mask in zip(image, mask, strict=True):
            ys = np.rint(tile_image[:, :, 0] * 255 / 4).astype(int)
            xs = np.rint(tile_image[:, :, 1] * 255 / 4).astype(int)
            np.testing.assert_array_equal(tile_mask[:, :, 1] == 1.0, pattern[ys, xs])  # still one window each
            corners.add((ys.min(), xs.min()))
    assert len(corners) > 5  # the windows of one tile differ
    with pytest.raises(DataError, match="crops_per_tile"):
        make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), crops_per_tile=2)


def test_foreground_bias_one_always_holds_nucleus_pixels(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = np.full((SIZE, SIZE, 3), 200, np.uint8)
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    cv2.circle(mask, (50, 10), 3, (255, 255, 255), -1)  # one small nucleus, about 0.7 % of the tile
    cv2.imwrite(str(tmp_path / "images" / "one.png"), image)
    cv2.imwrite(str(tmp_path / "masks" / "one.png"), mask)
    cv2.imwrite(str(tmp_path / "images" / "none.png"), image)
    cv2.imwrite(str(tmp_path / "masks" / "none.png"), np.zeros_like(mask))
    images, masks = pairs(tmp_path)

    def foreground_per_crop(bias: float) -> np.ndarray:
        dataset = make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=2, crop_size=(12, 12),
                               repeat=True, foreground_bias=bias)
        return np.concatenate([mask[:, :, :, 1].sum(axis=(1, 2)) for _, mask in dataset.take(30)
                               .as_numpy_iterator()]).reshape(-1, 2)  # columns: none.png, one.png

    biased = foreground_per_crop(1.0)
    assert (biased[:, 1] > 0).all() and (biased[:, 0] == 0).all()  # an empty tile falls back to uniform windows
    assert (foreground_per_crop(0.0)[:, 1] == 0).any()  # uniform windows often miss it: the test can tell


def test_same_seed_same_batches_other_seed_differs(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=12))

    def build(seed: int) -> tf.data.Dataset:
        return make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=4, shuffle=True, seed=seed,
                            crop_size=(32, 32), random_flips=True, foreground_bias=0.5)

    dataset = build(137)
    first, again, fresh = first_batch(dataset), first_batch(dataset), first_batch(build(137))
    for left, right in zip(first, fresh, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(first[0], first_batch(build(138))[0])
    assert not np.array_equal(first[0], again[0])  # each pass (epoch) reshuffles and redraws crops


def test_autotune_follows_the_host_and_never_changes_the_batches(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=6))

    def build(autotune: bool | None) -> tf.data.Dataset:
        return make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=4, shuffle=True, seed=7,
                            crop_size=(16, 16), crops_per_tile=3, random_flips=True, repeat=True,
                            autotune=autotune)

    tuned, fixed = build(True), build(False)
    assert tuned.options().autotune.enabled is True and fixed.options().autotune.enabled is False
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert build(None).options().autotune.enabled is has_gpu  # CPU-only hosts share their cores with the model
    for (tuned_image, tuned_mask), (fixed_image, fixed_mask) in zip(
            tuned.take(5).as_numpy_iterator(), fixed.take(5).as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(tuned_image, fixed_image)
        np.testing.assert_array_equal(tuned_mask, fixed_mask)


def test_unknown_mask_colour_names_file_and_value(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=3))
    grey = cv2.imread(masks[1])
    grey[5:9, 5:9] = 128
    cv2.imwrite(masks[1], grey)
    check_masks(masks[:1], RGB_MAP)
    with pytest.raises(DataError, match=r"mask .*tile_001\.png: value \(128,128,128\) is not in \[mask\] rgb_map"):
        check_masks(masks, RGB_MAP)
    dataset = make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tile_001\.png: grey value 128 is not in"):
        list(dataset)  # a map of greys reads masks as one channel
    coloured_map = {**RGB_MAP, (255, 0, 0): 2}
    dataset = make_dataset(images, masks, coloured_map, 3, (SIZE, SIZE), batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tile_001\.png: value \(128,128,128\) is not in"):
        list(dataset)


def test_tile_of_the_wrong_size_names_the_file(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=2))
    with pytest.raises(DataError, match=r"image .*tile_000\.png: size 64×64 does not fit \[model\] image_height"):
        check_sizes(images, masks, (48, 48))
    check_sizes(images, masks, (48, 48), crop_size=(48, 48))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tile_000\.png: size 64×64 does not fit"):
        list(make_dataset(images, masks, RGB_MAP, 2, (48, 48)))


def test_missing_mask_empty_and_missing_folders(tmp_path: Path):
    root = write_tiles(tmp_path / "data", count=3)
    (root / "masks" / "tile_001.png").unlink()
    with pytest.raises(DataError, match=r"\[train\] masks_dir: no mask for tile_001\.png in .*masks"):
        pairs(root)
    with pytest.raises(DataError, match=r"\[valid\] images_dir: .*nowhere does not exist"):
        list_pairs(tmp_path / "nowhere", root / "masks", section="valid")
    with pytest.raises(DataError, match=r"\[test\] masks_dir: .*nowhere does not exist"):
        list_pairs(root / "images", tmp_path / "nowhere", section="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"\[valid\] images_dir: .*empty holds no images"):
        list_pairs(tmp_path / "empty", root / "masks", section="valid")


def test_masks_without_image_are_ignored_with_a_warning(tmp_path: Path):
    root = write_tiles(tmp_path, count=3)
    (root / "images" / "tile_002.png").unlink()
    with pytest.warns(UserWarning, match=r"\[train\] masks_dir: 1 mask\(s\) .* ignored: tile_002\.png"):
        images, masks = pairs(root)
    assert [Path(path).name for path in masks] == ["tile_000.png", "tile_001.png"]


def test_grey_configs_and_grey_files(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=2))
    image, _ = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE), image_channels=1))
    assert image.shape == (2, SIZE, SIZE, 1)
    expected = cv2.imread(images[0], cv2.IMREAD_GRAYSCALE)  # grey content: channel weights do not matter
    np.testing.assert_allclose(image[0, :, :, 0] * 255, expected, atol=1)
    # 1-channel PNG files: replicated for a 3-channel config, and a 1-channel mask is read as grey RGB.
    cv2.imwrite(images[0], expected)
    cv2.imwrite(masks[0], cv2.imread(masks[0], cv2.IMREAD_GRAYSCALE))
    check_masks(masks, RGB_MAP)
    image, mask = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE)))
    assert image.shape == (2, SIZE, SIZE, 3) and mask[0, :, :, 1].any()


def test_bgr_order_reverses_channels(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    red = np.zeros((8, 8, 3), np.uint8)
    red[:, :, 2] = 255  # OpenCV writes BGR: this is red
    cv2.imwrite(str(tmp_path / "images" / "red.png"), red)
    cv2.imwrite(str(tmp_path / "masks" / "red.png"), np.zeros_like(red))
    images, masks = pairs(tmp_path)
    rgb, _ = first_batch(make_dataset(images, masks, RGB_MAP, 2, (8, 8)))
    bgr, _ = first_batch(make_dataset(images, masks, RGB_MAP, 2, (8, 8), color_order="BGR"))
    assert rgb[0, 0, 0].tolist() == [1.0, 0.0, 0.0] and bgr[0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(DataError, match=r"\[image\] color_order"):
        make_dataset(images, masks, RGB_MAP, 2, (8, 8), color_order="HSV")


def test_tiff_tiles_are_read(tmp_path: Path):
    root = write_tiles(tmp_path, count=2, suffix=".tif")
    images, masks = list_pairs(root / "images", root / "masks", mask_file_format=".tif")
    image, mask = first_batch(make_dataset(images, masks, RGB_MAP, 2, (SIZE, SIZE)))
    assert image.shape == (2, SIZE, SIZE, 3) and mask[:, :, :, 1].any()


def test_a_colour_mapped_to_ignore_gives_an_all_zero_one_hot_row(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=2))
    mask = cv2.imread(masks[0], cv2.IMREAD_UNCHANGED)
    line = (cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0) & (mask == 0)  # a ring round each disc
    mask[line] = 128  # prep's IGNORE_LEVEL
    cv2.imwrite(masks[0], mask)
    ignoring = {**RGB_MAP, (128, 128, 128): -1}
    check_masks(masks, ignoring)
    with pytest.raises(DataError, match=r"value \(128,128,128\) is not in \[mask\] rgb_map.*auto-ignore-line"):
        check_masks(masks, RGB_MAP)
    _, one_hot = first_batch(make_dataset(images, masks, ignoring, 2, (SIZE, SIZE), batch_size=2))
    grey = mask if mask.ndim == 2 else mask[:, :, 0]
    np.testing.assert_array_equal(one_hot[0].sum(axis=-1) == 0, grey == 128)
    np.testing.assert_array_equal(one_hot[0][:, :, 1] == 1, grey == 255)
    np.testing.assert_array_equal(one_hot[1].sum(axis=-1), 1.0)  # a tile without the level: unchanged
    mask[0, 0] = 77  # a colour the map lacks, beside the ignored ones: still caught while streaming
    cv2.imwrite(masks[0], mask)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"grey value 77 is not in \[mask\] rgb_map"):
        first_batch(make_dataset(images, masks, ignoring, 2, (SIZE, SIZE), batch_size=2))
    with pytest.raises(DataError, match=r"class -2"):
        make_dataset(images, masks, {**RGB_MAP, (128, 128, 128): -2}, 2, (SIZE, SIZE))



def test_the_epoch_montage_shows_ignored_pixels_grey_not_as_background(tmp_path: Path):
    from train.callbacks import montage_sheet
    from train.config import IGNORE_CLASS, load_config
    from train.data import montage_tiles

    images, masks = pairs(write_tiles(tmp_path, count=1))
    mask = cv2.imread(masks[0], cv2.IMREAD_UNCHANGED)
    grey = mask if mask.ndim == 2 else mask[:, :, 0]
    line = (cv2.dilate(grey, np.ones((3, 3), np.uint8)) > 0) & (grey == 0)
    mask[line] = 128
    cv2.imwrite(masks[0], mask)
    config_path = tmp_path / "ignoring.config"
    config_path.write_text("[model]\nimage_width = 64\nimage_height = 64\nnum_layers = 3\n"
                           "[mask]\nrgb_map = {(0,0,0):0,(255,255,255):1,(128,128,128):-1}\n")
    inputs, classes, display = montage_tiles(load_config(config_path), images, masks)
    np.testing.assert_array_equal(classes[0] == IGNORE_CLASS, line)
    np.testing.assert_array_equal(classes[0] == 1, grey == 255)
    sheet = montage_sheet(display, classes, np.zeros_like(classes), epoch=1)
    truth_column = sheet[-(SIZE + 4) : -4, SIZE + 4 : 2 * SIZE + 4, 0]  # the row's middle panel
    np.testing.assert_array_equal(truth_column == 128, line)
    np.testing.assert_array_equal(truth_column == 255, grey == 255)

def test_bad_rgb_map_names_the_key(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=1))
    with pytest.raises(DataError, match=r"\[mask\] rgb_map: class 2 .*\[model\] num_classes = 2"):
        make_dataset(images, masks, {(0, 0, 0): 0, (255, 255, 255): 2}, 2, (SIZE, SIZE))
    with pytest.raises(DataError, match=r"\[mask\] rgb_map: key"):
        make_dataset(images, masks, {(0, 0): 0}, 2, (SIZE, SIZE))


def test_dataset_is_lazy(tmp_path: Path):
    images, masks = pairs(write_tiles(tmp_path, count=50, size=16))
    dataset = make_dataset(images, masks, RGB_MAP, 2, (16, 16), batch_size=4)
    for index in range(40, 50):  # nothing was read when the dataset was made: removing files breaks nothing yet
        Path(images[index]).unlink()
        Path(masks[index]).unlink()
    image, _ = first_batch(dataset)
    assert image.shape == (4, 16, 16, 3)
    with pytest.raises(tf.errors.NotFoundError, match=r"tile_040\.png"):
        list(dataset)


def test_real_tiles_stream(real_data: Path):
    images, masks = list_pairs(real_data / "tiles" / "images", real_data / "tiles" / "masks")
    check_masks(masks, RGB_MAP)
    check_sizes(images, masks, (512, 512))
    dataset = make_dataset(images, masks, RGB_MAP, 2, (512, 512), batch_size=4)
    total = sum(len(image) for image, _ in dataset)
    assert total == dataset_size(images) == 11
    _, mask = first_batch(dataset)
    assert 0.002 < mask[:, :, :, 1].mean() < 0.05  # nuclei cover ~0.5–3 % of a tile
