"""infer.stitch: tiling, Gaussian weighting, flip TTA and band-streamed stitching, with numpy predictors."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infer.stitch import (
    StreamStats,
    assemble_tiles,
    count_tiles,
    flip_tta,
    gaussian_importance,
    sliding_window_predict,
    stream_predict,
    tile_starts,
    whole_predict,
)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def pixelwise(batch: np.ndarray) -> np.ndarray:
    """Position-independent: p1 = sigmoid(4·(x − 0.5)) of the channel mean, p0 = 1 − p1."""
    nucleus = sigmoid(4.0 * (batch.mean(axis=-1) - 0.5))
    return np.stack([1.0 - nucleus, nucleus], axis=-1).astype(np.float32)


def content_dependent(batch: np.ndarray) -> np.ndarray:
    """Per-pixel nonlinearity plus a per-tile offset, so any seam or misplaced tile would show."""
    grey = batch.mean(axis=-1)
    offset = grey.mean(axis=(1, 2), keepdims=True)
    spread = grey.std(axis=(1, 2), keepdims=True)
    return np.stack([np.tanh(3 * grey) + offset, grey**2 - spread], axis=-1).astype(np.float32)


def edge_biased(batch: np.ndarray) -> np.ndarray:
    """The truth (channel 0) plus an error growing towards the tile border, like a U-Net with little context."""
    tile = batch.shape[1]
    offsets = (np.arange(tile) - (tile - 1) / 2) / ((tile - 1) / 2)
    bias = 0.5 * np.maximum(np.abs(offsets)[:, None], np.abs(offsets)[None, :]) ** 2
    return (batch[..., :1] + bias[None, :, :, None]).astype(np.float32)


def lopsided(batch: np.ndarray) -> np.ndarray:
    """Not equivariant under any flip or rotation: different ramps down and across the tile."""
    rows = np.linspace(0, 1, batch.shape[1])[None, :, None, None]
    cols = np.linspace(0, 1, batch.shape[2])[None, None, :, None]
    return (batch[..., :1] * (1 + rows) + cols**2 + 0.3 * rows * cols).astype(np.float32)


class Recorder:
    """Wraps a predictor and counts the tiles it is asked for."""

    def __init__(self, predict):
        self.predict = predict
        self.tiles = 0
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.tiles += len(batch)
        self.calls += 1
        return self.predict(batch)


def random_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)


def reference_stitch(image: np.ndarray, predict, tile: int, overlap: float, weighting: str) -> np.ndarray:
    """Independent whole-image version: pad (numpy 'reflect' = BORDER_REFLECT_101), weight, accumulate."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((0, max(0, tile - height)), (0, max(0, tile - width)), (0, 0)), mode="reflect")
    weight = gaussian_importance(tile) if weighting == "gaussian" else np.ones((tile, tile), np.float32)
    total, weights = None, np.zeros(padded.shape[:2], np.float64)
    for y in tile_starts(padded.shape[0], tile, overlap):
        for x in tile_starts(padded.shape[1], tile, overlap):
            probabilities = predict(padded[None, y:y + tile, x:x + tile])[0]
            total = np.zeros((*padded.shape[:2], probabilities.shape[2])) if total is None else total
            total[y:y + tile, x:x + tile] += probabilities * weight[:, :, None]
            weights[y:y + tile, x:x + tile] += weight
    return (total / weights[:, :, None])[:height, :width]


# --- tiling and weights ---------------------------------------------------------------------------------------


@given(length=st.integers(1, 3000), tile=st.integers(1, 600), overlap=st.floats(0, 0.95))
def test_tile_starts_cover_every_position_in_increasing_steps_no_longer_than_the_stride(length, tile, overlap):
    length = max(length, tile)
    starts = tile_starts(length, tile, overlap)
    stride = max(1, round(tile * (1 - overlap)))
    assert starts[0] == 0
    assert starts[-1] == length - tile
    steps = np.diff(starts)
    assert np.all(steps >= 1)
    assert np.all(steps <= stride)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start:start + tile] = True
    assert covered.all()
    # as few tiles as that stride allows
    assert len(starts) == 1 + -(-(length - tile) // stride)


def test_tile_starts_at_overlap_0_are_the_exact_grid():
    assert tile_starts(2048, 512, 0.0) == [0, 512, 1024, 1536]
    assert tile_starts(512, 512, 0.0) == [0]
    assert tile_starts(901, 512, 0.0) == [0, 389]


@pytest.mark.parametrize("bad", [(100, 200, 0.0), (600, 512, 1.0), (600, 512, -0.1), (10, 0, 0.0)])
def test_tile_starts_reject_bad_arguments(bad):
    with pytest.raises(ValueError):
        tile_starts(*bad)


@pytest.mark.parametrize("tile", [1, 2, 7, 64, 512])
def test_gaussian_weights_are_positive_max_1_and_symmetric(tile):
    weights = gaussian_importance(tile)
    assert weights.shape == (tile, tile) and weights.dtype == np.float32
    assert weights.min() > 0
    assert weights.max() == 1.0
    np.testing.assert_array_equal(weights, weights[::-1])
    np.testing.assert_array_equal(weights, weights[:, ::-1])
    np.testing.assert_array_equal(weights, weights.T)
    centre = (tile - 1) // 2
    assert weights[centre, centre] == 1.0


def test_gaussian_weights_stay_positive_for_a_narrow_sigma():
    assert gaussian_importance(512, sigma_scale=0.02).min() > 0


# --- exactness --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1024, 1024), (512, 1536)])
def test_overlap_0_equals_the_per_tile_predictions_assembled(shape):
    height, width = shape
    image = random_image(height, width)
    tiles = image.reshape(height // 512, 512, width // 512, 512, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 512, 512, 3)
    expected = assemble_tiles(content_dependent(tiles), height, width, 512)
    stitched = sliding_window_predict(image, content_dependent, 512, overlap=0.0, batch_size=3)
    np.testing.assert_allclose(stitched, expected, atol=1e-4)


@pytest.mark.parametrize("shape", [(1024, 1024), (512, 1536), (901, 700), (300, 300), (7, 5)])
def test_output_size_equals_input_size(shape):
    image = random_image(*shape)
    result = sliding_window_predict(image, pixelwise, 512, overlap=0.25)
    assert result.shape == (*shape, 2) and result.dtype == np.float32
    np.testing.assert_allclose(result, pixelwise(image[None])[0], atol=1e-5)


@pytest.mark.parametrize("weighting, tta", [("gaussian", 0), ("constant", 0), ("gaussian", 4), ("gaussian", 8)])
@pytest.mark.parametrize("shape", [(200, 170), (64, 64), (30, 100)])
def test_a_per_pixel_model_is_reproduced_exactly(shape, weighting, tta):
    image = random_image(*shape, seed=1)
    result = sliding_window_predict(image, pixelwise, 64, overlap=0.25, weighting=weighting, tta=tta)
    np.testing.assert_allclose(result, pixelwise(image[None])[0], atol=1e-5)


def test_a_keras_lambda_model_is_reproduced_exactly():
    keras = pytest.importorskip("keras")
    inputs = keras.Input((64, 64, 1))
    nucleus = keras.layers.Lambda(lambda x: keras.ops.sigmoid(4.0 * (x - 0.5)))(inputs)
    outputs = keras.layers.Concatenate()([1.0 - nucleus, nucleus])
    model = keras.Model(inputs, outputs)
    image = random_image(150, 130, channels=1, seed=2)
    expected = pixelwise(image[None])[0]
    for tta in (0, 4):
        result = sliding_window_predict(image, model.predict_on_batch, 64, overlap=0.25, batch_size=8, tta=tta)
        np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(200, 170), (40, 90), (9, 3)])
@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
def test_matches_an_independent_whole_image_stitcher(shape, weighting):
    image = random_image(*shape, seed=3)
    result = sliding_window_predict(image, content_dependent, 32, overlap=0.4, batch_size=3, weighting=weighting)
    expected = reference_stitch(image, content_dependent, 32, 0.4, weighting)
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_small_images_are_padded_like_opencv_reflect_101():
    image = random_image(20, 13, channels=1, seed=4)
    tiles = []
    sliding_window_predict(image, lambda batch: tiles.append(batch.copy()) or batch, 32, overlap=0.0)
    expected = cv2.copyMakeBorder(image[:, :, 0], 0, 12, 0, 19, cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(tiles[0][0, :, :, 0], expected)


def test_gaussian_weighting_lowers_the_seam_error_of_a_position_dependent_model():
    image = random_image(256, 256, channels=1, seed=5)
    truth = image[:, :, 0]
    errors = {weighting: np.abs(sliding_window_predict(image, edge_biased, 64, overlap=0.5,
                                                       weighting=weighting)[:, :, 0] - truth).mean()
              for weighting in ("gaussian", "constant")}
    assert errors["gaussian"] < 0.8 * errors["constant"]


# --- flip TTA ---------------------------------------------------------------------------------------------------


def test_flip_tta_maps_every_prediction_back_before_averaging():
    batch = np.random.default_rng(6).random((3, 16, 16, 2), dtype=np.float32)
    expected4 = np.mean([lopsided(batch), lopsided(batch[:, :, ::-1])[:, :, ::-1], lopsided(batch[:, ::-1])[:, ::-1],
                         lopsided(batch[:, ::-1, ::-1])[:, ::-1, ::-1]], axis=0)
    np.testing.assert_allclose(flip_tta(batch, lopsided, 4), expected4, atol=1e-6)
    expected2 = np.mean([lopsided(batch), lopsided(batch[:, :, ::-1])[:, :, ::-1]], axis=0)
    np.testing.assert_allclose(flip_tta(batch, lopsided, 2), expected2, atol=1e-6)
    transposed = batch.transpose(0, 2, 1, 3)
    expected8 = (expected4 + flip_tta(transposed, lopsided, 4).transpose(0, 2, 1, 3)) / 2
    np.testing.assert_allclose(flip_tta(batch, lopsided, 8), expected8, atol=1e-6)
    np.testing.assert_array_equal(flip_tta(batch, lopsided, 0), lopsided(batch))


def test_flip_tta_calls_the_predictor_once_per_transform():
    recorder = Recorder(pixelwise)
    flip_tta(random_image(8, 8)[None], recorder, 8)
    assert recorder.calls == 8


def test_flip_tta_8_needs_square_tiles():
    with pytest.raises(ValueError, match="square"):
        flip_tta(random_image(8, 6)[None], pixelwise, 8)


# --- streaming --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, overlap, batch_size", [
    ((300, 200), 0.25, 4), ((300, 200), 0.0, 4), ((257, 64), 0.5, 16), ((1000, 40), 0.25, 32), ((50, 300), 0.5, 3),
])
def test_stream_bands_tile_the_rows_in_order_and_stay_within_two_tiles(shape, overlap, batch_size):
    image = random_image(*shape, seed=7)
    stats = StreamStats()
    bands = list(stream_predict(image, content_dependent, 64, overlap, batch_size, "gaussian", 0, stats))
    assert bands[0][0] == 0 and bands[-1][1] == shape[0]
    for (_, end, _), (start, _, _) in zip(bands, bands[1:], strict=False):
        assert end == start
    for start, end, band in bands:
        assert band.shape == (end - start, shape[1], 2)
    whole = sliding_window_predict(image, content_dependent, 64, overlap, batch_size)
    np.testing.assert_array_equal(np.concatenate([band for _, _, band in bands]), whole)
    assert 0 < stats.max_band_rows <= 2 * 64


def test_stream_memory_is_bounded_by_the_band_not_the_image():
    image = random_image(16384, 40, channels=1, seed=8)  # narrower than a tile: padded lazily, tile by tile
    tracemalloc.start()
    try:
        for _ in stream_predict(image, lambda batch: batch * 2, 64, 0.25, 4, "gaussian", 0):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes / 4  # a padded copy of the image or full-size accumulators would exceed this


@pytest.mark.parametrize("shape, overlap", [((1024, 1024), 0.0), ((1024, 1024), 0.25), ((901, 700), 0.5),
                                            ((7, 5), 0.25), ((2000, 513), 0.1)])
def test_count_tiles_matches_the_tiles_predicted(shape, overlap):
    recorder = Recorder(lambda batch: np.zeros((*batch.shape[:3], 1), np.float32))
    stats = StreamStats()
    sliding_window_predict(np.zeros((*shape, 1), np.uint8), recorder, 512, overlap, 5, stats=stats)
    assert recorder.tiles == stats.tiles == count_tiles(*shape, 512, overlap)


def test_a_read_only_prediction_is_not_written_to():
    def frozen(batch: np.ndarray) -> np.ndarray:
        prediction = pixelwise(batch)
        prediction.setflags(write=False)
        return prediction

    image = random_image(100, 90, seed=9)
    np.testing.assert_allclose(sliding_window_predict(image, frozen, 64), pixelwise(image[None])[0], atol=1e-5)


def test_tiles_keep_the_image_dtype():
    seen = []
    image = np.full((70, 70, 3), 200, np.uint8)
    sliding_window_predict(image, lambda batch: seen.append(batch.dtype) or pixelwise(batch / 255.0), 64)
    assert set(seen) == {np.dtype(np.uint8)}


@pytest.mark.parametrize("kwargs, message", [
    ({"weighting": "hann"}, "weighting"), ({"tta": 3}, "tta"), ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sliding_window_predict(random_image(10, 10), pixelwise, 8, **kwargs)


def test_a_predictor_returning_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match="predict_batch returned"):
        sliding_window_predict(random_image(10, 10), lambda batch: batch[:, :4], 8)


def test_assemble_tiles_refuses_a_partial_grid():
    with pytest.raises(ValueError):
        assemble_tiles(np.zeros((2, 4, 4, 1)), 8, 6, 4)


@pytest.mark.parametrize("tta", [0, 2, 4, 8])
def test_whole_pass_equals_the_stitched_result_for_a_pointwise_network(tta: int):
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, (90, 130, 1)).astype(np.float32)  # neither a multiple of 16 nor square
    calls = []

    def pointwise(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        assert batch.shape[1] % 16 == 0 and batch.shape[2] % 16 == 0  # padded to the pooling multiple
        return np.concatenate([1 - batch, batch], axis=3)

    whole = whole_predict(image, pointwise, 16, tta)
    assert whole.shape == (90, 130, 2) and whole.dtype == np.float32
    np.testing.assert_allclose(whole[:, :, 1], image[:, :, 0], atol=1e-6)
    assert len(calls) == max(tta, 1) and all(shape[0] == 1 for shape in calls)  # one image, one call per view
    if tta == 8:
        assert calls[0][1] == calls[0][2] == 144  # rotations need a square: padded to 144²
    stitched = sliding_window_predict(image, pointwise, 64, 0.25, tta=tta)
    np.testing.assert_allclose(whole, stitched, atol=1e-5)


@pytest.mark.parametrize("tta", [0, 4])
@pytest.mark.parametrize("mode", ["full", "whole"])
def test_saved_probability_stays_within_0_and_1_when_the_background_rounds_above_1(mode: str, tta: int):
    """A blended or averaged background of 1 + ε (float32 rounding) must not save a negative probability."""
    from infer.run import InferOptions, predict_probability

    def over_sure(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((*batch.shape[:3], 2), np.float32)
        out[..., 0] = np.float32(1.0) + np.float32(2.0**-22) * (batch[..., 0] % 3)  # just above 1, or exactly 1
        out[..., 1] = 1 - out[..., 0]
        return out

    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    probability = np.zeros(image.shape[:2], np.float32)
    confidence = np.zeros(image.shape[:2], np.uint8)
    mask, _ = predict_probability(image, over_sure, 32, InferOptions(mode=mode, tta=tta), probability,
                                  confidence)
    assert probability.min() == 0.0 and probability.max() <= 1.0
    assert not mask.any() and not confidence.any()


def test_the_whole_pass_bound_counts_the_square_that_eight_views_predict():
    from infer.run import InferOptions, whole_pass

    bound = 1024 * 1024
    assert whole_pass(InferOptions(mode="whole", tta=2, whole_max_pixels=bound), 4096, 256)  # 4096 × 256 ≤ 1024²
    assert not whole_pass(InferOptions(mode="whole", tta=8, whole_max_pixels=bound), 4096, 256)  # padded to 4096²
    assert whole_pass(InferOptions(mode="whole", tta=8, whole_max_pixels=bound), 1024, 1000)
    assert not whole_pass(InferOptions(mode="full", tta=0, whole_max_pixels=bound), 10, 10)
