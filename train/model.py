"""The trained model's face, for train, evaluate, infer and the benches: build and compile FlexUNet from a
config, load a run's best weights, read a self-describing model folder.

Keras is imported only when a model is built, so a command line can check its arguments and config first
(a bad flag answers at once, not after TensorFlow's start-up).
"""

from __future__ import annotations

import re
from pathlib import Path

from train.card import config_of_model, versions
from train.config import Config
from train.runs import TrainError, run_paths

# The compute precision a model can be loaded at, by its Keras dtype policy (weights stay float32 in both).
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bfloat16 natively

__all__ = ["PRECISIONS", "TrainError", "build_model", "compile_model", "config_of_model", "load_trained",
           "resolve_precision", "run_paths", "versions"]


def build_model(config: Config, image_size: tuple[int | None, int | None] | None = None):
    """FlexUNet from the [model] section; ``image_size`` overrides the input size (crops, full tiles)."""
    from train.flexunet import build_flexunet

    m = config.model  # its rules were checked when it was loaded (train.config.check_rules)
    height, width = image_size or config.image_size
    # As the reference: more than one class means softmax over classes, whatever final_activation says.
    final = "softmax" if m.num_classes > 1 else m.final_activation
    return build_flexunet(height, width, m.image_channels, m.num_classes, base_filters=m.base_filters,
                          base_kernels=m.base_kernels, num_layers=m.num_layers, dropout_rate=m.dropout_rate,
                          dilation=m.dilation, normalization=m.normalization, activation=m.activation,
                          final_activation=final, downsample=m.downsample,
                          local_contrast=m.local_contrast)


def compile_model(model, config: Config) -> None:
    import keras

    from train.losses import LOSSES, METRICS

    m = config.model
    options = {"learning_rate": m.learning_rate}
    if m.clipvalue is not None:
        options["clipvalue"] = m.clipvalue
    optimizer = (keras.optimizers.AdamW if m.optimizer == "AdamW" else keras.optimizers.Adam)(**options)
    # The reference's metric first (comparability), then the ones that mean something with 1–3 % nuclei.
    names = list(dict.fromkeys([*m.metrics, "nucleus_dice", "nucleus_iou"]))
    model.compile(optimizer=optimizer, loss=LOSSES[m.loss], metrics=[METRICS[n] for n in names])


def resolve_precision(precision: str, cpu_flags: str | None = None, gpu: bool | None = None) -> str:
    """A PRECISIONS key for ``precision``: "auto" is bfloat16 on a CPU that computes it natively (one of
    BFLOAT16_CPU_FLAGS in ``cpu_flags``, default /proc/cpuinfo) when no GPU is visible, else float32: emulated
    bfloat16 on an older CPU is slower than float32, and GPUs have their own rules."""
    if precision != "auto":
        return precision
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:  # not Linux: no flags to go by
            cpu_flags = ""
    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    native = any(re.search(rf"\b{flag}\b", cpu_flags) for flag in BFLOAT16_CPU_FLAGS)
    return "bfloat16" if native and not gpu else "float32"


def load_trained(config: Config, image_size: tuple[int | None, int | None] | None = None,
                 precision: str | None = None, jit_compile: bool = False):
    """The best model of a run, rebuilt from the config at ``image_size`` (default: the tile size), computing at
    ``precision`` ("auto" or a PRECISIONS key; None: the global Keras policy), its predictions compiled by XLA with
    ``jit_compile``."""
    import keras

    paths = run_paths(config)
    previous = keras.mixed_precision.global_policy()
    if precision is not None:
        keras.mixed_precision.set_global_policy(PRECISIONS[resolve_precision(precision)])
    try:  # layers take the policy when they are made: restore it for whatever comes next
        model = build_model(config, image_size)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if paths.best.exists():
        source = paths.best
        try:
            model.load_weights(str(source))
        except (ValueError, KeyError, OSError) as err:
            raise TrainError(f"{source}: these weights do not fit the model of {config.path} "
                             f"({str(err).splitlines()[0][:200]})") from None
    elif paths.best_model.exists():
        from train.losses import custom_objects

        source = paths.best_model
        saved = keras.models.load_model(str(source), custom_objects=custom_objects(), compile=False)
        try:
            model.set_weights(saved.get_weights())
        except ValueError as err:
            raise TrainError(f"{source}: this model does not fit {config.path} ({err})") from None
    else:
        raise TrainError(f"{paths.model_dir}: no trained model ({paths.best.name} or {paths.best_model.name}) "
                         f"where {config.path.name}'s [train] model_dir points; run 'train fit --config "
                         f"{config.path}' first, or, for a model trained with --set overrides of its folders, "
                         "give its folder: infer --model MODEL_DIR (it holds model.json and the config it used)")
    compile_model(model, config)
    model.jit_compile = jit_compile  # predict only: compile_model's "auto" leaves XLA off on a CPU
    return model
