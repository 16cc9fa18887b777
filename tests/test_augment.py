import cv2
import numpy as np
import pytest

from prep.augment import (
    NO_AUGMENTATION,
    AugOptions,
    apply,
    barrel_map,
    barrel_map_naive,
    elastic_map,
    fade_nuclei,
    parse_centers,
    parse_floats,
    plan,
)
from tests.conftest import random_pair

SPECS = plan(AugOptions())


@pytest.fixture(scope="module")
def tile():
    image, mask = random_pair(np.random.default_rng(3), 256, 256, nuclei=12)
    return image, mask[:, :, 0]


def test_default_plan_is_the_reference_set():
    prefixes = [s.prefix for s in SPECS]
    assert prefixes[:5] == ["hflipped", "vflipped", "rotated_90", "rotated_180", "rotated_270"]
    assert "deformed_alpha_1300_sigmoid_8" in prefixes and "deformed_alpha_1300_sigmoid_10" in prefixes
    assert "distorted_0.02_sigma_40" in prefixes and "distorted_0.03_sigma_40" in prefixes
    assert [p for p in prefixes if p.startswith("barr")] == [
        f"barrdistorted_{k}_0.3_0.3" for k in range(1001, 1006)]
    assert [p for p in prefixes if p.startswith("pinc")] == [
        f"pincdistorted_{k}_0.3_-0.3" for k in range(1001, 1006)]
    assert plan(NO_AUGMENTATION) == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.prefix)
def test_mask_stays_binary_and_shapes_hold(tile, spec):
    image, mask = tile
    aug_image, aug_mask = apply(spec, image, mask, np.random.default_rng(0))
    assert aug_image.shape == image.shape and aug_image.dtype == np.uint8
    assert aug_mask.shape == mask.shape
    assert set(np.unique(aug_mask)) <= {0, 255}
    assert aug_mask.any()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.prefix)
def test_image_and_mask_move_together(tile, spec):
    """Nucleus pixels (dark, 60) stay under the warped mask: one field for both arrays."""
    image, mask = tile
    aug_image, aug_mask = apply(spec, image, mask, np.random.default_rng(0))
    inside = aug_image[:, :, 0][aug_mask > 0]
    assert np.median(inside) < 100


def test_augmentations_differ_from_the_original(tile):
    image, mask = tile
    for spec in SPECS:
        aug_image, _ = apply(spec, image, mask, np.random.default_rng(0))
        assert not np.array_equal(aug_image, image), spec.prefix


def test_borders_are_reflected_not_black(tile):
    image, mask = tile
    for spec in SPECS:
        aug_image, _ = apply(spec, image, mask, np.random.default_rng(0))
        assert aug_image.min() >= 60, spec.prefix  # the synthetic tile has no pixel darker than 60


@pytest.mark.parametrize("center", [(0.3, 0.3), (0.5, 0.5), (0.7, 0.7)])
def test_barrel_amount_zero_is_identity(tile, center):
    image, mask = tile
    spec = next(s for s in SPECS if s.kind == "barrel")
    zero = type(spec)("barrel", "b0", {**spec.params, "center": list(center), "amount": 0.0})
    out_image, out_mask = apply(zero, image, mask)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


@pytest.mark.parametrize("amount", [0.3, -0.3])
def test_vectorised_barrel_map_matches_the_per_pixel_formula(amount):
    fast = barrel_map(48, 64, 0.3, 0.7, 0.3, amount)
    slow = barrel_map_naive(48, 64, 0.3, 0.7, 0.3, amount)
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-3)
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-3)


def test_barrel_magnifies_the_centre_and_leaves_the_outside_alone():
    map_x, map_y = barrel_map(100, 100, 0.5, 0.5, 0.3, 0.3)
    assert map_x[50, 60] < 60  # samples nearer the centre: magnification
    assert map_x[50, 95] == 95 and map_y[5, 50] == 5  # outside R = 30 px: identity


def test_barrel_maps_are_cached_and_read_only():
    first = barrel_map(64, 64, 0.5, 0.5, 0.3, 0.3)
    assert barrel_map(64, 64, 0.5, 0.5, 0.3, 0.3) is first
    with pytest.raises(ValueError):
        first[0][0, 0] = 1.0


def test_random_augmentations_follow_the_generator(tile):
    image, mask = tile
    spec = next(s for s in SPECS if s.kind == "elastic")
    a = apply(spec, image, mask, np.random.default_rng(5))
    b = apply(spec, image, mask, np.random.default_rng(5))
    c = apply(spec, image, mask, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_elastic_strength_matches_the_reference_scale():
    """α = 1300, σ = 8 displaces by ~2 px rms as the reference's 3-D smoothed field did, not tens."""
    map_x, _ = elastic_map(256, 256, 1300, 8, np.random.default_rng(0))
    rms = float(np.sqrt(np.mean((map_x - np.arange(256)[None, :]) ** 2)))
    assert 1.0 < rms < 4.0


def test_a_tiny_elastic_sigma_smooths_within_one_channel_only():
    from prep.augment import reference_alpha_scale

    # Under σ = 1/8 the kernel is one sample wide: the middle channel alone, no attenuation (it once indexed past it).
    assert reference_alpha_scale(0.1) == 1.0 and reference_alpha_scale(8) < 0.1
    map_x, _ = elastic_map(32, 32, 1, 0.1, np.random.default_rng(0))
    assert np.isfinite(map_x).all()


def test_distortion_largest_displacement_is_size_times_width(tile):
    from prep.augment import distortion_map

    map_x, map_y = distortion_map(256, 256, 0.03, 40, np.random.default_rng(0))
    ys, xs = np.indices((256, 256))
    largest = np.sqrt((map_x - xs) ** 2 + (map_y - ys) ** 2).max()
    assert largest == pytest.approx(0.03 * 256, rel=1e-3)


def test_rotation_needs_a_square_tile():
    spec = next(s for s in SPECS if s.kind == "rotate")
    with pytest.raises(ValueError, match="square"):
        apply(spec, np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8))


def test_repeated_parameters_are_refused():
    with pytest.raises(ValueError, match="repeat"):
        plan(AugOptions(elastic_sigmas=(8.0, 8.0)))


def test_parsers_refuse_nan_and_garbage():
    assert parse_floats("8, 10", "--x") == (8.0, 10.0)
    assert parse_centers("0.3,0.3;0.7,0.3") == ((0.3, 0.3), (0.7, 0.3))
    for bad in ("nan", "1,inf", "a"):
        with pytest.raises(ValueError, match="--x"):
            parse_floats(bad, "--x")
    with pytest.raises(ValueError, match="pair"):
        parse_centers("0.3,0.3,0.3")


def test_cached_fixed_point_barrel_matches_the_float_map(tile):
    from prep.augment import remap

    image, mask = tile
    spec = next(s for s in SPECS if s.kind == "pincushion")
    fast_image, fast_mask = apply(spec, image, mask)
    maps = barrel_map(256, 256, *spec.params["center"], spec.params["radius"], spec.params["amount"])
    float_image, float_mask = remap(image, mask, *maps)
    difference = np.abs(fast_image.astype(int) - float_image)
    # OpenCV's fixed point is 1/32 pixel: on this noise tile (neighbours up to 170 apart) that is ≤ ~6 levels.
    assert difference.max() <= 6 and difference.mean() < 0.1
    np.testing.assert_array_equal(fast_mask, float_mask)


@pytest.mark.parametrize("kind", ["barrel", "pincushion"])
def test_barrel_on_the_disc_box_equals_remapping_the_whole_tile(tile, kind):
    import cv2

    image, mask = tile
    for spec in (s for s in SPECS if s.kind == kind):
        maps = barrel_map(256, 256, *spec.params["center"], spec.params["radius"], spec.params["amount"])
        linear = cv2.convertMaps(*maps, cv2.CV_16SC2)
        nearest, _ = cv2.convertMaps(*maps, cv2.CV_16SC2, nninterpolation=True)
        whole_image = cv2.remap(image, *linear, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        whole_mask = cv2.remap(mask, nearest, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        boxed_image, boxed_mask = apply(spec, image, mask)
        np.testing.assert_array_equal(boxed_image, whole_image)
        np.testing.assert_array_equal(boxed_mask, whole_mask)


def _flat_field_with_nucleus(background: int = 200, nucleus: int = 100):
    image = np.full((96, 96, 3), background, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    cv2.circle(mask, (48, 48), 12, 255, -1)
    image[mask > 0] = nucleus
    return image, mask


@pytest.mark.parametrize("factor", [0.3, 0.5, 0.8])
def test_fading_scales_the_nucleus_contrast_and_leaves_the_rest(factor):
    image, mask = _flat_field_with_nucleus()
    faded = fade_nuclei(image, mask, factor)
    inside = faded[:, :, 0][mask > 0].astype(float)
    # contrast 100 against the 200 around it becomes factor·100
    assert np.allclose(200 - inside, factor * 100, atol=2.5)  # inpainting estimates the 200 within a level or two
    far = cv2.dilate(mask, np.ones((9, 9), np.uint8)) == 0
    assert np.array_equal(faded[far], image[far])
    assert faded.dtype == np.uint8 and faded.shape == image.shape


def test_fading_keeps_texture_and_follows_the_local_surroundings():
    """A nucleus on a dark clump fades towards the clump, not towards the bright background."""
    image, mask = _flat_field_with_nucleus(background=220)
    cv2.circle(image, (48, 48), 30, (130, 130, 130), -1)  # clump
    texture = (np.indices((96, 96)).sum(axis=0) % 2 * 20).astype(np.uint8)
    image[mask > 0] = (60 + texture[mask > 0])[:, None]
    faded = fade_nuclei(image, mask, 0.5)[:, :, 0].astype(float)
    inside = faded[mask > 0]
    assert abs(inside.mean() - (130 - 0.5 * (130 - 70))) < 3  # halfway to the clump's 130, not to 220
    # the chequer's 20-level swing survives at half amplitude
    assert 7 < inside[texture[mask > 0] > 0].mean() - inside[texture[mask > 0] == 0].mean() < 13


def test_fade_plans_one_tile_per_factor_and_leaves_the_mask(tile):
    specs = plan(AugOptions(fade_factors=(0.3, 0.6)))
    fades = [s for s in specs if s.kind == "fade"]
    assert [s.prefix for s in fades] == ["faded_0.3", "faded_0.6"]
    assert all(s.kind != "fade" for s in SPECS)  # off by default: the reference has no such copies
    image, mask = tile
    faded, same_mask = apply(fades[0], image, mask)
    assert np.array_equal(same_mask, mask)
    assert faded[:, :, 0][mask > 0].mean() > image[:, :, 0][mask > 0].mean() + 10


@pytest.mark.parametrize("factor", [0.0, 1.0, -0.2, 1.5])
def test_fade_factor_outside_zero_one_is_refused(factor):
    image, mask = _flat_field_with_nucleus()
    with pytest.raises(ValueError, match="fade factor"):
        fade_nuclei(image, mask, factor)


def test_fading_a_tile_without_nuclei_changes_nothing():
    image, _ = _flat_field_with_nucleus()
    assert np.array_equal(fade_nuclei(image, np.zeros((96, 96), np.uint8), 0.5), image)
