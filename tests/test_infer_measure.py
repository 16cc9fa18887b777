"""infer.measure: shape measurements against analytic discs/ellipses, cleaning, splitting, overlays, real GT."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from infer.measure import (
    MEASUREMENT_COLUMNS,
    clean_mask,
    drop_unconfident,
    label_means,
    label_nuclei,
    measure_nuclei,
)
from infer.overlay import draw_overlay
from tests.conftest import REAL

EDF100 = REAL / "isbi" / "EDF" / "EDF100.png"
EDF100_GT = REAL / "isbi" / "EDF" / "EDF100_GT.png"


def disc(shape: tuple[int, int], centre_y: float, centre_x: float, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre_y) ** 2 + (cols - centre_x) ** 2 <= radius**2


def ellipse(shape, centre_y, centre_x, semi_major, semi_minor, angle_deg=0.0) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    angle = math.radians(angle_deg)
    along = (cols - centre_x) * math.cos(angle) + (rows - centre_y) * math.sin(angle)
    across = -(cols - centre_x) * math.sin(angle) + (rows - centre_y) * math.cos(angle)
    return (along / semi_major) ** 2 + (across / semi_minor) ** 2 <= 1


def measure_one(mask: np.ndarray, image: np.ndarray | None = None) -> dict:
    nuclei = measure_nuclei(label_nuclei(mask), mask.astype(np.uint8) if image is None else image)
    assert len(nuclei) == 1
    return nuclei[0]


@pytest.mark.parametrize("radius", [10, 25])
def test_disc_measurements_match_geometry(radius):
    size = 2 * radius + 21
    nucleus = measure_one(disc((size, size), size // 2, size // 2, radius))
    assert nucleus["area_px"] == pytest.approx(math.pi * radius**2, rel=0.03)
    assert nucleus["equivalent_diameter_px"] == pytest.approx(2 * radius, rel=0.02)
    assert nucleus["perimeter_px"] == pytest.approx(2 * math.pi * radius, rel=0.08)
    assert nucleus["eccentricity"] < 0.1
    assert nucleus["solidity"] > 0.95
    assert (nucleus["centroid_y"], nucleus["centroid_x"]) == (size // 2, size // 2)


@pytest.mark.parametrize(
    ("semi_major", "semi_minor", "angle"), [(15, 9, 0), (30, 18, 0), (20, 10, 35), (40, 12, 70), (25, 20, 120)]
)
def test_ellipse_eccentricity_matches_axes(semi_major, semi_minor, angle):
    size = 2 * semi_major + 11
    nucleus = measure_one(ellipse((size, size), size / 2, size / 2, semi_major, semi_minor, angle))
    assert nucleus["eccentricity"] == pytest.approx(math.sqrt(1 - semi_minor**2 / semi_major**2), abs=0.05)
    assert nucleus["area_px"] == pytest.approx(math.pi * semi_major * semi_minor, rel=0.03)


def test_l_shape_is_not_solid():
    shape = np.zeros((60, 60), bool)
    shape[10:50, 10:20] = True
    shape[40:50, 10:50] = True
    # 700 px in a hull of about 40·40 − 30·30/2 = 1150 px
    assert measure_one(shape)["solidity"] == pytest.approx(700 / 1150, abs=0.05)


def test_tiny_objects_are_defined():
    mask = np.zeros((9, 12), bool)
    mask[1, 1] = True  # a single pixel
    mask[5, 3:9] = True  # a line
    first, second = measure_nuclei(label_nuclei(mask), mask.astype(np.uint8))
    assert (first["area_px"], first["solidity"], first["eccentricity"]) == (1, 1.0, 0.0)
    assert 0 < first["perimeter_px"] < 4  # Crofton's estimate of a lone pixel: between a disc's π and a square's 4
    assert (second["area_px"], second["solidity"], second["eccentricity"]) == (6, 1.0, 1.0)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.full((40, 50), 123, np.uint8), 123.0),
        (np.dstack([np.full((40, 50), v, np.uint8) for v in (10, 20, 60)]), 30.0),
        (np.full((40, 50), 40000, np.uint16), 40000.0),
    ],
    ids=["grey", "rgb", "16-bit"],
)
def test_mean_intensity_is_exact_on_a_constant_region(image, expected):
    mask = disc((40, 50), 20, 25, 9)
    image = image.copy()
    image[~mask] = 0  # the surroundings must not leak into the mean
    assert measure_one(mask, image)["mean_intensity"] == expected


def test_rows_follow_label_ids_and_columns():
    labels = np.zeros((30, 30), np.int32)
    labels[2:6, 2:6] = 5
    labels[20:25, 20:28] = 2
    nuclei = measure_nuclei(labels, np.zeros((30, 30, 3), np.uint8))
    assert [nucleus["id"] for nucleus in nuclei] == [2, 5]
    assert all(tuple(nucleus) == MEASUREMENT_COLUMNS for nucleus in nuclei)
    assert [nucleus["area_px"] for nucleus in nuclei] == [40, 16]
    assert (nuclei[1]["centroid_y"], nuclei[1]["centroid_x"]) == (3.5, 3.5)


def test_mean_probability_is_the_mean_confidence_under_each_nucleus():
    labels = np.zeros((30, 30), np.int32)
    labels[2:6, 2:6] = 1
    labels[20:25, 20:28] = 2
    probability = np.zeros((30, 30), np.float32)
    probability[2:6, 2:6] = 0.9
    probability[20:25, 20:24] = 0.6
    probability[20:25, 24:28] = 1.0
    probability[10:15, 10:15] = 0.99  # outside every nucleus: must not count
    image = np.zeros((30, 30), np.uint8)
    first, second = measure_nuclei(labels, image, probability)
    assert first["mean_probability"] == pytest.approx(0.9) and second["mean_probability"] == pytest.approx(0.8)
    # The uint8 map infer keeps (k/255) gives the same means to within its rounding.
    quantized = np.rint(probability * 255).astype(np.uint8)
    assert [n["mean_probability"] for n in measure_nuclei(labels, image, quantized)] == pytest.approx(
        [0.9, 0.8], abs=1 / 255)
    assert all(np.isnan(n["mean_probability"]) for n in measure_nuclei(labels, image))
    with pytest.raises(ValueError, match="probability shape"):
        measure_nuclei(labels, image, probability[:, :29])


def test_empty_mask():
    empty = np.zeros((32, 48), bool)
    labels = label_nuclei(empty, split_touching=True)
    assert labels.dtype == np.int32 and labels.shape == empty.shape and not labels.any()
    assert measure_nuclei(labels, np.zeros((32, 48), np.uint8)) == []
    image = np.full((32, 48, 3), 77, np.uint8)
    np.testing.assert_array_equal(draw_overlay(image, empty, truth=empty), image)


def test_measure_rejects_a_mismatched_image():
    with pytest.raises(ValueError, match="does not match"):
        measure_nuclei(np.ones((10, 10), np.int32), np.zeros((10, 11), np.uint8))


def test_clean_mask_removes_specks_and_fills_holes():
    mask = disc((60, 60), 30, 30, 15)
    mask[28:33, 28:33] = False  # a hole
    mask[2, 2] = mask[3, 3] = True  # a diagonal speck: one 8-connected component of 2 px
    mask[50:53, 2:5] = True  # 9 px
    cleaned = clean_mask(mask, min_area=10, fill_holes=True)
    np.testing.assert_array_equal(cleaned, disc((60, 60), 30, 30, 15))
    assert clean_mask(mask, min_area=2)[2, 2]  # 8-connectivity keeps the diagonal pair together
    assert not clean_mask(mask, min_area=3)[2, 2]
    np.testing.assert_array_equal(clean_mask(mask), mask)


def test_exclude_border_keeps_only_nuclei_inside_the_field():
    inside = disc((60, 80), 30, 40, 10)
    mask = inside.copy()
    mask[0:5, 10:15] = True  # cut by the top edge
    mask[50:60, 75:80] = True  # the bottom-right corner
    mask[20:22, 78:80] = True  # two pixels on the right edge
    mask[40:43, 0] = True  # a sliver on the left edge
    mask[1, 1] = True  # a pixel diagonal to nothing: inside, one pixel from the corner
    kept = clean_mask(mask, exclude_border=True)
    expected = inside.copy()
    expected[1, 1] = True
    np.testing.assert_array_equal(kept, expected)
    chain = np.zeros((9, 9), bool)
    chain[0, 0] = chain[1, 1] = chain[2, 2] = True  # 8-connected to the corner: the whole chain goes
    chain[5:7, 5:7] = True
    np.testing.assert_array_equal(clean_mask(chain, exclude_border=True), chain & (np.arange(9)[:, None] > 3))


def test_a_tile_of_a_field_loses_only_the_nuclei_on_its_field_edges():
    mask = np.zeros((40, 50), bool)
    mask[0:4, 10:14] = True  # top
    mask[36:40, 20:24] = True  # bottom
    mask[15:19, 0:3] = True  # left
    mask[25:29, 47:50] = True  # right
    mask[18:22, 24:28] = True  # inside
    kept = clean_mask(mask, exclude_border=True, field_edges=("top", "right"))  # a top-right tile
    expected = mask.copy()
    expected[0:4, 10:14] = expected[25:29, 47:50] = False
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(clean_mask(mask, exclude_border=True, field_edges=()), mask)  # an inner tile
    np.testing.assert_array_equal(clean_mask(mask, field_edges=("top",)), mask)  # edges only say where
    with pytest.raises(ValueError, match="unknown edge 'up'"):
        clean_mask(mask, exclude_border=True, field_edges=("up", "left"))


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))),
       st.sets(st.sampled_from(["top", "bottom", "left", "right"])))
def test_exclude_border_matches_a_per_component_check(mask, edges):
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    expected = np.zeros_like(mask)
    for index in range(1, count + 1):
        component = labels == index
        touches = {"top": component[0].any(), "bottom": component[-1].any(), "left": component[:, 0].any(),
                   "right": component[:, -1].any()}
        if not any(touches[edge] for edge in edges):
            expected |= component
    np.testing.assert_array_equal(clean_mask(mask, exclude_border=True, field_edges=edges), expected)
    if edges == {"top", "bottom", "left", "right"}:  # the default is a whole field
        np.testing.assert_array_equal(clean_mask(mask, exclude_border=True), expected)


@settings(max_examples=30, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_fill_holes_matches_scipy(mask):
    np.testing.assert_array_equal(clean_mask(mask, fill_holes=True), ndimage.binary_fill_holes(mask))


@settings(max_examples=30, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))), st.booleans())
def test_labels_and_measurements_stay_in_range(mask, split_touching):
    labels = label_nuclei(mask, split_touching=split_touching)
    np.testing.assert_array_equal(labels > 0, mask)
    nuclei = measure_nuclei(labels, mask.astype(np.uint8) * 200)
    assert [nucleus["id"] for nucleus in nuclei] == list(range(1, labels.max() + 1))
    assert sum(nucleus["area_px"] for nucleus in nuclei) == mask.sum()
    for nucleus in nuclei:
        assert 0 < nucleus["solidity"] <= 1 and 0 <= nucleus["eccentricity"] <= 1
        assert nucleus["mean_intensity"] == 200


@pytest.mark.parametrize("radius", [12, 15])
def test_split_touching_separates_two_overlapping_discs(radius):
    shape = (4 * radius, 5 * radius)
    first = disc(shape, 2 * radius, 1.5 * radius, radius)
    second = disc(shape, 2 * radius, 2.9 * radius, radius)  # centres 1.4 r apart
    mask = first | second
    assert label_nuclei(mask).max() == 1
    labels = label_nuclei(mask, split_touching=True)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, mask)
    left, right = (labels == 1).sum(), (labels == 2).sum()
    assert left == pytest.approx(right, rel=0.1)
    # Each piece is essentially its own disc: the cut runs along the neck.
    assert ((labels == 1) & first).sum() / left > 0.95 and ((labels == 2) & second).sum() / right > 0.95


@pytest.mark.parametrize(
    ("semi_major", "semi_minor", "angle"), [(15, 9, 0), (15, 9, 40), (30, 18, 0), (30, 18, 65), (25, 10, 100)]
)
def test_split_touching_keeps_a_lone_ellipse_whole(semi_major, semi_minor, angle):
    size = 2 * semi_major + 9
    mask = ellipse((size, size), size / 2, size / 2, semi_major, semi_minor, angle)
    np.testing.assert_array_equal(label_nuclei(mask, split_touching=True), mask.astype(np.int32))


def test_label_ids_are_consecutive_from_one():
    rng = np.random.default_rng(3)
    mask = np.zeros((200, 200), np.uint8)
    for _ in range(25):
        centre = tuple(int(v) for v in rng.integers(10, 190, 2))
        cv2.circle(mask, centre, int(rng.integers(4, 14)), 1, -1)
    for split_touching in (False, True):
        labels = label_nuclei(mask, split_touching=split_touching)
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
        np.testing.assert_array_equal(labels > 0, mask > 0)
    assert label_nuclei(mask, split_touching=True).max() >= label_nuclei(mask).max()


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Nucleus pixels with a 4-neighbour in the background: the pixels an 8-connected contour passes through."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def test_draw_overlay_touches_only_boundaries():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    mask = disc((90, 120), 30, 30, 12) | ellipse((90, 120), 60, 80, 20, 9, 30)
    original = image.copy()
    overlay = draw_overlay(image, mask)
    np.testing.assert_array_equal(image, original)  # a copy, the input untouched
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    changed = (overlay != image).any(axis=2)
    boundary = inner_boundary(mask)
    near_boundary = ndimage.binary_dilation(boundary, np.ones((3, 3), bool))
    assert changed.any() and not (changed & ~near_boundary).any()
    assert (overlay[boundary] == (255, 40, 40)).all()
    assert (draw_overlay(image, mask.astype(np.uint8) * 255) == overlay).all()  # a 0/255 mask draws the same


def test_draw_overlay_shows_split_boundaries_and_truth():
    shape = (48, 64)
    labels = label_nuclei(disc(shape, 24, 18, 12) | disc(shape, 24, 18 + 16.8, 12), split_touching=True)
    assert labels.max() == 2
    image = np.full(shape + (3,), 128, np.uint8)
    overlay = draw_overlay(image, labels)
    # Pixels of nucleus 1 that touch nucleus 2 are on its contour: the cut between them is drawn.
    cut = (labels == 1) & ndimage.binary_dilation(labels == 2, np.ones((3, 3), bool))
    assert cut.any() and (overlay[cut] == (255, 40, 40)).all()

    truth = disc(shape, 30, 45, 8)
    with_truth = draw_overlay(image, labels > 0, truth=truth, color=(200, 0, 0), truth_color=(0, 200, 0))
    colours = {tuple(pixel) for pixel in with_truth.reshape(-1, 3)}
    assert {(200, 0, 0), (0, 200, 0)} <= colours
    # The prediction is drawn last, so it stays visible where the outlines cross.
    assert (with_truth[inner_boundary(labels > 0)] == (200, 0, 0)).all()


def test_draw_overlay_accepts_three_channel_ground_truth():
    image = np.zeros((40, 40, 3), np.uint8)
    gt = np.dstack([disc((40, 40), 20, 20, 8).astype(np.uint8) * 255] * 3)
    np.testing.assert_array_equal(draw_overlay(image, gt), draw_overlay(image, gt[..., 0] > 0))


@pytest.mark.skipif(not EDF100_GT.is_file(), reason="../shared/data/edf-real is not available")
def test_real_edf100_ground_truth():
    truth = cv2.imread(str(EDF100_GT), cv2.IMREAD_UNCHANGED)
    image = cv2.cvtColor(cv2.imread(str(EDF100), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mask = truth.any(axis=2) if truth.ndim == 3 else truth > 0
    components = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)[0] - 1
    nuclei = measure_nuclei(label_nuclei(mask), image)
    assert len(nuclei) == components > 0
    assert 15 <= np.median([nucleus["equivalent_diameter_px"] for nucleus in nuclei]) <= 35
    # Nuclei are darker than the field around them.
    assert np.median([nucleus["mean_intensity"] for nucleus in nuclei]) < image[~mask].mean()
    overlay = draw_overlay(image, mask)
    assert overlay.shape == image.shape and (overlay != image).any()


def test_moments_summed_in_bands_match_one_pass(monkeypatch):
    import infer.measure as measure

    rng = np.random.default_rng(11)
    mask = np.zeros((90, 70), np.uint8)
    for _ in range(9):
        cv2.ellipse(mask, (int(rng.integers(5, 65)), int(rng.integers(5, 85))), (int(rng.integers(3, 12)),
                    int(rng.integers(3, 9))), float(rng.integers(0, 180)), 0, 360, 1, -1)
    labels = measure.label_nuclei(mask > 0)
    image = rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)
    probability = rng.random((90, 70)).astype(np.float32)
    whole = measure.measure_nuclei(labels, image, probability)
    monkeypatch.setattr(measure, "MOMENT_BAND_ROWS", 7)  # objects straddle many band borders
    banded = measure.measure_nuclei(labels, image, probability)
    assert len(whole) == len(banded) > 3
    for a, b in zip(whole, banded, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key


def test_overlay_in_place_draws_the_same_on_the_image_itself():
    image = np.full((40, 40, 3), 120, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 12:25] = True
    copied = draw_overlay(image, mask)
    assert (image == 120).all()  # the default leaves the input alone
    drawn = draw_overlay(image, mask, in_place=True)
    assert drawn is image
    np.testing.assert_array_equal(drawn, copied)


def test_drop_unconfident_removes_whole_nuclei_below_the_mean_and_renumbers_in_order():
    labels = np.zeros((40, 60), np.int32)
    labels[2:10, 2:10] = 1  # mean 0.9: kept
    labels[2:10, 20:30] = 2  # mean 0.6 (half 0.95, half 0.25): dropped, though part of it is sure
    labels[20:30, 5:15] = 3  # mean just above the bar: kept
    labels[20:30, 40:50] = 4  # mean 0.55: dropped
    probability = np.zeros(labels.shape, np.float32)
    probability[labels == 1] = 0.9
    probability[2:10, 20:25] = 0.95
    probability[2:10, 25:30] = 0.25
    probability[labels == 3] = 0.72
    probability[labels == 4] = 0.55
    kept = drop_unconfident(labels, probability, 0.7)
    assert kept.dtype == labels.dtype
    np.testing.assert_array_equal(kept == 1, labels == 1)
    np.testing.assert_array_equal(kept == 2, labels == 3)  # renumbered, old order kept
    assert kept.max() == 2 and not kept[labels == 2].any() and not kept[labels == 4].any()
    # uint8 confidences are read as k/255, as measure_nuclei reads them
    as_uint8 = np.rint(probability * 255).astype(np.uint8)
    np.testing.assert_array_equal(drop_unconfident(labels, as_uint8, 0.69), kept)
    # a bar of 0 keeps every nucleus; the input is never changed
    np.testing.assert_array_equal(drop_unconfident(labels, probability, 0.0), labels)
    assert labels.max() == 4
    np.testing.assert_array_equal(drop_unconfident(np.zeros((3, 3), np.int32), np.ones((3, 3)), 0.5), 0)
    with pytest.raises(ValueError, match="does not match"):
        drop_unconfident(labels, probability[:-1], 0.5)


def test_label_means_by_bands_equal_the_whole_image_sums(monkeypatch):
    import infer.measure

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, (37, 23)).astype(np.int32)
    labels[labels == 4] = 0  # id 4 has no pixel: count 0, mean 0
    grey = rng.random((37, 23))
    colour = rng.integers(0, 256, (37, 23, 4), dtype=np.uint8)  # RGBA: alpha is left out
    expected_count = np.bincount(labels.ravel(), minlength=6)
    expected_count[0] = 0  # the background is not a label
    whole_count, (whole_grey, whole_colour) = label_means(labels, [grey, colour])
    monkeypatch.setattr(infer.measure, "MOMENT_BAND_ROWS", 5)  # 8 bands, the last one short
    count, (band_grey, band_colour) = label_means(labels, [grey, colour])
    np.testing.assert_array_equal(count, expected_count)
    np.testing.assert_array_equal(whole_count, expected_count)
    for label_id in (1, 2, 3, 5):
        inside = labels == label_id
        assert band_grey[label_id] == pytest.approx(grey[inside].mean())
        assert band_colour[label_id] == pytest.approx(colour[..., :3][inside].mean())
    assert band_grey[4] == 0 and band_colour[4] == 0
    np.testing.assert_allclose(band_grey, whole_grey)
    np.testing.assert_allclose(band_colour, whole_colour)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), bar=st.floats(0.05, 0.95))
def test_drop_unconfident_keeps_exactly_the_nuclei_measure_nuclei_finds_sure_enough(seed, bar):
    rng = np.random.default_rng(seed)
    labels = ndimage.label(rng.random((32, 32)) > 0.6)[0].astype(np.int32)
    probability = rng.random((32, 32)).astype(np.float32)
    image = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    sure = [n["id"] for n in measure_nuclei(labels, image, probability) if n["mean_probability"] >= bar]
    kept = drop_unconfident(labels, probability, bar)
    assert int(kept.max()) == len(sure)
    for new_id, old_id in enumerate(sure, start=1):
        np.testing.assert_array_equal(kept == new_id, labels == old_id)


def test_split_touching_nuclei_meet_the_area_and_border_rules_one_by_one():
    from infer.measure import nuclei_of

    pair = np.zeros((60, 80), np.uint8)
    cv2.circle(pair, (8, 30), 10, 1, -1)  # cut by the left edge
    cv2.circle(pair, (30, 30), 12, 1, -1)  # whole, touching it
    assert nuclei_of(pair > 0, 30, True, True).max() == 0  # one blob: it touches the edge, so all of it goes
    split = nuclei_of(pair > 0, 30, True, True, split_touching=True)
    assert split.max() == 1 and split[30, 30] == 1 and not split[:, 0].any()  # the whole nucleus stays
    small = np.zeros((60, 80), np.uint8)
    cv2.circle(small, (30, 30), 12, 1, -1)
    cv2.circle(small, (46, 30), 5, 1, -1)
    pieces = nuclei_of(small > 0, 0, True, False, split_touching=True)
    assert pieces.max() == 2 and np.bincount(pieces.ravel())[1:].min() < 200
    kept = nuclei_of(small > 0, 200, True, False, split_touching=True)
    assert kept.max() == 1 and kept[30, 30] == 1 and np.bincount(kept.ravel())[1] >= 200
