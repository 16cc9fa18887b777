"""FlexUNet: the configurable U-Net of the reference project (TensorFlowFlexUNet), as one builder function
(Keras layers; `train.model` builds it from a config).

Layout, for num_layers = L (level i = 0 … L-1, level L-1 is the bottleneck and is not pooled):

    encoder level i:  conv → [BN] → Dropout(dropout_rate·i) → conv → [BN] → MaxPool 2×2 (not at level L-1)
    decoder level i:  Conv2DTranspose 2×2/2 → concat(skip of level i) → conv → [BN] → Dropout(dropout_rate·i)
                      → conv → [BN]          (i = L-2 … 0)
    head:             1×1 conv to num_classes → final activation (float32, for mixed precision)

With downsample = d > 1 the network works at 1/d resolution: the input is average-pooled d×d first and the
class logits are bilinearly up-sampled d× before the final activation, so the model still maps an H×W image to
H×W probabilities (tiling, stitching and metrics are unchanged). EDF nuclei are 20–30 px wide, so d = 2 still
resolves them while each step costs about a quarter and a crop sees four times the area.

With local_contrast = w > 0 each input channel is joined by its local contrast over a w×w box (LocalContrast),
computed before anything else, so train, evaluate and infer all see it.

Level i has base_filters·2^i filters, kernel sizes base_kernels − 2i (floor 3) and dilation rates dilation − i
(floor 1); a decoder level uses the same values as the encoder level it joins. With the reference config
(512×512×3, 2 classes, 16 filters, 9×9 kernels, 8 levels) this is the reference's 124,996,866-parameter model.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from train.architecture import MIN_DILATION, MIN_KERNEL, check_architecture, max_num_layers  # noqa: F401


@keras.saving.register_keras_serializable(package="edf")
class LocalContrast(layers.Layer):
    """Append, per input channel, its local contrast: (x − local mean) / max(local std, min_std) over a
    window×window box.

    Why: a nucleus inside a dark cell clump can be brighter than a lone nucleus' cytoplasm, so absolute grey
    levels mislead; relative to its surroundings it is still the darkest part. Box sums near the image edge
    count only pixels inside the image (the sums are divided by the box sum of ones), so a tile's border is
    normalised by what the tile holds. Runs in float32 whatever the mixed-precision policy: E[x²] − E[x]²
    cancels badly in 16 bits. min_std keeps flat background from amplifying noise.
    """

    def __init__(self, window: int, min_std: float = 0.04, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if window < 3 or window % 2 == 0:
            raise ValueError(f"[model] local_contrast = {window}: expected an odd window of at least 3 pixels")
        self.window = window
        self.min_std = min_std

    def _box_sums(self, stacked):
        # A box filter as two 1-D passes of ones: O(2·window) per pixel instead of O(window²).
        channels = stacked.shape[-1]
        row = ops.ones((1, self.window, channels, 1), dtype="float32")
        column = ops.ones((self.window, 1, channels, 1), dtype="float32")
        return ops.depthwise_conv(ops.depthwise_conv(stacked, row, padding="same"), column, padding="same")

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        stacked = ops.concatenate([x, x * x, ops.ones_like(x[..., :1])], axis=-1)
        sums = self._box_sums(stacked)
        count = sums[..., 2 * channels:]
        mean = sums[..., :channels] / count
        variance = ops.maximum(sums[..., channels:2 * channels] / count - mean * mean, 0.0)
        contrast = (x - mean) / ops.maximum(ops.sqrt(variance), self.min_std)
        return ops.concatenate([x, contrast], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], None if input_shape[-1] is None else 2 * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "window": self.window, "min_std": self.min_std}


def level_kernel_size(base_kernels: tuple[int, int], level: int) -> tuple[int, int]:
    return tuple(max(k - 2 * level, MIN_KERNEL) for k in base_kernels)


def level_dilation(dilation: tuple[int, int], level: int) -> tuple[int, int]:
    return tuple(max(d - level, MIN_DILATION) for d in dilation)


def build_flexunet(
    image_height: int,
    image_width: int,
    image_channels: int,
    num_classes: int,
    base_filters: int = 16,
    base_kernels: tuple[int, int] = (9, 9),
    num_layers: int = 8,
    dropout_rate: float = 0.02,
    dilation: tuple[int, int] = (1, 1),
    normalization: bool = False,
    activation: str = "relu",
    final_activation: str = "softmax",
    input_normalize: bool = False,
    downsample: int = 1,
    local_contrast: int = 0,
    name: str = "FlexUNet",
) -> keras.Model:
    """Build FlexUNet (see the module docstring); the output is (N, H, W, num_classes) in float32.

    ``image_height``/``image_width`` may be None for a size-agnostic model (train on crops, validate and
    predict on whole tiles); inputs must then be divisible by downsample·2^(num_layers-1).
    """
    nominal = max(downsample, 1) * 2 ** (num_layers - 1) if num_layers >= 1 else 1
    check_architecture(image_height or nominal, image_width or nominal, num_layers, base_kernels, dilation,
                       downsample)

    def conv_block(x, prefix: str, filters: int, level: int):
        conv_args = {
            "kernel_size": level_kernel_size(base_kernels, level),
            "dilation_rate": level_dilation(dilation, level),
            "activation": activation,
            "padding": "same",
            "kernel_initializer": "he_normal",
        }
        x = layers.Conv2D(filters, name=f"{prefix}_conv1", **conv_args)(x)
        if normalization:
            x = layers.BatchNormalization(name=f"{prefix}_bn1")(x)
        x = layers.Dropout(dropout_rate * level, name=f"{prefix}_dropout")(x)
        x = layers.Conv2D(filters, name=f"{prefix}_conv2", **conv_args)(x)
        if normalization:
            x = layers.BatchNormalization(name=f"{prefix}_bn2")(x)
        return x

    inputs = keras.Input((image_height, image_width, image_channels), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    if local_contrast:
        x = LocalContrast(local_contrast, name="local_contrast")(x)
    if downsample > 1:
        x = layers.AveragePooling2D(downsample, name="downsample")(x)

    skips = []
    for level in range(num_layers):
        x = conv_block(x, f"enc{level}", base_filters * 2**level, level)
        if level < num_layers - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    for level in reversed(range(num_layers - 1)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = conv_block(x, f"dec{level}", filters, level)

    x = layers.Conv2D(num_classes, 1, name="head_conv")(x)
    if downsample > 1:  # logits, not probabilities: interpolated logits still give a proper softmax
        x = layers.UpSampling2D(downsample, interpolation="bilinear", name="upsample")(x)
    # float32 here keeps softmax and the loss stable when the rest of the model runs in mixed_float16.
    outputs = layers.Activation(final_activation, dtype="float32", name="head_activation")(x)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="edf")
class MultiWorkerLogs(keras.Model):
    """FlexUNet as `train fit` runs it under MultiWorkerMirroredStrategy: its step logs carry one axis.

    Why: Keras 3 does not support that strategy (keras-team/keras#20585); its fit reduces each log across workers
    with ``strategy.reduce("MEAN", log, axis=0)``, which fails on a scalar. A (1,) log reduces to the scalar every
    callback expects. (train.fit works around the other break, the eager symbolic build.)
    """

    def train_step(self, data):
        return {name: ops.reshape(value, (1,)) for name, value in super().train_step(data).items()}

    def test_step(self, data):
        return {name: ops.reshape(value, (1,)) for name, value in super().test_step(data).items()}
