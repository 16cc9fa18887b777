"""FlexUNet builder: the reference's parameter count, shapes, per-level settings, config-key errors, mixed precision."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from train.flexunet import LocalContrast, build_flexunet, check_architecture, max_num_layers

REFERENCE_PARAMS = 124_996_866  # TensorFlowFlexUNet with the reference train_eval_infer.config


def tiny_model(**overrides) -> keras.Model:
    args = {
        "image_height": 64,
        "image_width": 64,
        "image_channels": 1,
        "num_classes": 3,
        "base_filters": 4,
        "base_kernels": (7, 7),
        "num_layers": 3,
    }
    args.update(overrides)
    return build_flexunet(**args)


def layers_of(model: keras.Model, kind: type) -> dict[str, keras.layers.Layer]:
    return {layer.name: layer for layer in model.layers if isinstance(layer, kind)}


def test_reference_config_has_the_reference_parameter_count():
    started = time.perf_counter()
    model = build_flexunet(
        512,
        512,
        3,
        2,
        base_filters=16,
        base_kernels=(9, 9),
        num_layers=8,
        dropout_rate=0.02,
        dilation=(1, 1),
        normalization=False,
    )
    seconds = time.perf_counter() - started
    assert model.count_params() == REFERENCE_PARAMS
    assert model.output_shape == (None, 512, 512, 2)
    assert seconds < 20, f"building the reference model took {seconds:.1f} s"


def test_parameter_count_does_not_depend_on_image_size():
    assert tiny_model().count_params() == tiny_model(image_height=128, image_width=96).count_params()


def test_output_shape_and_softmax():
    model = tiny_model()
    images = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()


def test_kernel_sizes_shrink_per_level_to_three_and_mirror_in_the_decoder():
    convs = layers_of(tiny_model(num_layers=5, image_height=32, image_width=32), keras.layers.Conv2D)
    expected = {0: (7, 7), 1: (5, 5), 2: (3, 3), 3: (3, 3), 4: (3, 3)}
    for level, size in expected.items():
        assert convs[f"enc{level}_conv1"].kernel_size == size
        assert convs[f"enc{level}_conv2"].kernel_size == size
        if level < 4:  # the bottleneck (last level) has no decoder twin
            assert convs[f"dec{level}_conv1"].kernel_size == size
            assert convs[f"dec{level}_conv2"].kernel_size == size
    assert convs["head_conv"].kernel_size == (1, 1)


def test_filters_double_per_level():
    convs = layers_of(tiny_model(), keras.layers.Conv2D)
    assert [convs[f"enc{level}_conv1"].filters for level in range(3)] == [4, 8, 16]
    assert [convs[f"dec{level}_conv2"].filters for level in range(2)] == [4, 8]


def test_dilation_shrinks_per_level_to_one():
    convs = layers_of(tiny_model(dilation=(3, 3)), keras.layers.Conv2D)
    assert [convs[f"enc{level}_conv1"].dilation_rate for level in range(3)] == [(3, 3), (2, 2), (1, 1)]
    assert convs["dec1_conv1"].dilation_rate == (2, 2)


@pytest.mark.parametrize("normalization", [False, True])
def test_batch_normalization_present_iff_normalization(normalization):
    norms = layers_of(tiny_model(normalization=normalization), keras.layers.BatchNormalization)
    assert bool(norms) == normalization
    if normalization:
        assert "enc0_bn1" in norms and "dec0_bn2" in norms


def test_dropout_rates_increase_per_level():
    dropouts = layers_of(tiny_model(dropout_rate=0.05), keras.layers.Dropout)
    rates = [dropouts[f"enc{level}_dropout"].rate for level in range(3)]
    assert rates == pytest.approx([0.0, 0.05, 0.10])
    assert dropouts["dec1_dropout"].rate == pytest.approx(0.05)


def test_input_normalize_adds_rescaling():
    assert not layers_of(tiny_model(), keras.layers.Rescaling)
    (rescale,) = layers_of(tiny_model(input_normalize=True), keras.layers.Rescaling).values()
    assert rescale.scale == pytest.approx(1 / 255)


def test_max_num_layers():
    assert max_num_layers(512, 512) == 10
    assert max_num_layers(64, 64) == 7
    assert max_num_layers(96, 64) == 6
    assert max_num_layers(63, 64) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_kernels": (8, 8)}, r"\[model\] base_kernels = \(8, 8\): kernel sizes must be odd"),
        ({"base_kernels": (0, 3)}, r"\[model\] base_kernels"),
        ({"num_layers": 8}, r"\[model\] num_layers = 8 is too deep for 64×64: .*num_layers = 7"),
        ({"num_layers": 0}, r"\[model\] num_layers = 0"),
        ({"dilation": (0, 1)}, r"\[model\] dilation"),
        ({"downsample": 3}, r"\[model\] downsample = 3 does not divide the image size 64×64"),
        ({"downsample": 2, "num_layers": 7}, r"\[model\] num_layers = 7 is too deep .*divisible by 128"),
    ],
)
def test_check_architecture_names_the_config_key(kwargs, message):
    args = {"image_height": 64, "image_width": 64, "num_layers": 3, "base_kernels": (9, 9), "dilation": (1, 1),
            "downsample": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        check_architecture(**args)
    with pytest.raises(ValueError, match=message):
        build_flexunet(
            args["image_height"],
            args["image_width"],
            3,
            2,
            base_kernels=args["base_kernels"],
            num_layers=args["num_layers"],
            dilation=args["dilation"],
            downsample=args["downsample"],
        )


def test_downsampled_model_keeps_full_resolution_io_and_the_same_weights():
    full, half = tiny_model(), tiny_model(downsample=2)
    assert half.output_shape == full.output_shape == (None, 64, 64, 3)
    assert half.count_params() == full.count_params()
    # It is the full-resolution net run on the 2×2-mean-pooled image, its logits bilinearly enlarged: checked
    # against a 32×32 twin holding the same weights.
    twin = tiny_model(image_height=32, image_width=32)
    twin.set_weights(half.get_weights())
    twin_logits = keras.Model(twin.input, twin.get_layer("head_conv").output)
    image = np.random.default_rng(0).random((2, 64, 64, 1)).astype("float32")
    pooled = image.reshape(2, 32, 2, 32, 2, 1).mean(axis=(2, 4))
    enlarged = keras.ops.image.resize(twin_logits.predict(pooled, verbose=0), (64, 64), interpolation="bilinear")
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(enlarged, axis=-1))
    np.testing.assert_allclose(half.predict(image, verbose=0), expected, atol=1e-5)


def test_deepest_allowed_model_builds():
    assert tiny_model(num_layers=7).output_shape == (None, 64, 64, 3)


def test_mixed_precision_outputs_float32():
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = tiny_model()
        assert model.get_layer("enc0_conv1").compute_dtype == "float16"
        probabilities = model(np.zeros((1, 64, 64, 1), np.float32), training=False)
        assert keras.backend.standardize_dtype(probabilities.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def brute_force_local_contrast(image: np.ndarray, window: int, min_std: float) -> np.ndarray:
    """(x − mean) / max(std, min_std) over the in-image part of a window×window box, one pixel at a time."""
    half = window // 2
    height, width = image.shape
    out = np.empty_like(image)
    for row in range(height):
        for col in range(width):
            box = image[max(row - half, 0):row + half + 1, max(col - half, 0):col + half + 1]
            out[row, col] = (image[row, col] - box.mean()) / max(box.std(), min_std)
    return out


def test_local_contrast_matches_a_brute_force_box_including_the_image_edges():
    images = np.random.default_rng(3).random((2, 23, 17, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(LocalContrast(7, min_std=0.04)(images))
    assert out.shape == (2, 23, 17, 2)
    np.testing.assert_array_equal(out[..., 0], images[..., 0])  # the grey levels themselves pass through
    for index in range(2):
        np.testing.assert_allclose(out[index, ..., 1], brute_force_local_contrast(images[index, ..., 0], 7, 0.04),
                                   atol=1e-4)


def test_local_contrast_ignores_the_brightness_of_the_surroundings():
    # The same textured nucleus-sized patch on a pale and on a dark background (a lone cell vs a clump):
    # grey levels differ by 0.4 everywhere, local contrast does not.
    patch = np.random.default_rng(4).random((32, 32)).astype("float32") * 0.3
    pale, dark = (patch + 0.6)[None, ..., None], (patch + 0.2)[None, ..., None]
    layer = LocalContrast(9)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pale))[..., 1],
                               keras.ops.convert_to_numpy(layer(dark))[..., 1], atol=1e-4)


def test_local_contrast_keeps_flat_background_quiet():
    # min_std: grey-level noise of ±0.005 on an empty slide must not be blown up to unit contrast.
    noise = np.random.default_rng(5).uniform(-0.005, 0.005, (1, 40, 40, 1)).astype("float32")
    contrast = keras.ops.convert_to_numpy(LocalContrast(9, min_std=0.04)(0.9 + noise))[..., 1]
    assert np.abs(contrast).max() < 0.25


@pytest.mark.parametrize("window", [0, 2, 8])
def test_local_contrast_rejects_windows_that_are_not_odd(window):
    with pytest.raises(ValueError, match=r"\[model\] local_contrast"):
        LocalContrast(window)


def test_local_contrast_model_doubles_the_input_channels_and_runs_in_float32_under_mixed_precision():
    images = np.random.default_rng(6).random((1, 64, 64, 1)).astype("float32")
    plain = tiny_model()
    model = tiny_model(local_contrast=15)
    assert model.get_layer("enc0_conv1").kernel.shape[2] == 2  # grey + its local contrast
    assert model.count_params() == plain.count_params() + 7 * 7 * 4  # one more input channel of the 7×7 conv
    expected = keras.ops.convert_to_numpy(model.get_layer("local_contrast")(images))
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        layer = LocalContrast(15)
        assert layer.compute_dtype == "float32"  # bfloat16 would wreck E[x²] − E[x]²
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images)), expected, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_local_contrast_model_survives_a_whole_model_save_and_load(tmp_path):
    model = tiny_model(local_contrast=15)
    images = np.random.default_rng(7).random((1, 64, 64, 1)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("local_contrast").window == 15
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_computes_it_natively():
    from train.model import resolve_precision

    zen4 = "flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni"
    sapphire_rapids = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile"
    haswell = "flags\t\t: fpu vme avx2 fma"
    assert resolve_precision("auto", zen4, gpu=False) == "bfloat16"
    assert resolve_precision("auto", sapphire_rapids, gpu=False) == "bfloat16"
    assert resolve_precision("auto", haswell, gpu=False) == "float32"
    assert resolve_precision("auto", zen4, gpu=True) == "float32"
    assert resolve_precision("auto", "flags : avx512_bf16x", gpu=False) == "float32"  # whole flags only
    assert resolve_precision("bfloat16", haswell, gpu=True) == "bfloat16"  # asked for is asked for
