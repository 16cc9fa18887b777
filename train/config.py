"""INI config → one typed, validated object, parsed once.

Compatible with the reference project's ``train_eval_infer.config``: its keys load and mean the same
thing. Values are Python literals read with ``ast.literal_eval`` (never ``eval``); a plain word is taken as
a string. Relative paths resolve against the config file's folder, as the reference ran from there.
Unknown keys warn by name; a bad value stops with ``[section] key`` and what was expected.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config problem; the message names the file and ``[section] key``."""


# ---------------------------------------------------------------------------------------------- value types

def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {[0, 0, 0]: 0}
        return text  # a bare word such as Adam: a string (a key's own parse then names what it expected)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "yes", "on", "false", "no", "off"}:
        return value.lower() in {"true", "yes", "on"}
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError("True or False")


def _as_bool_or_auto(value: Any) -> bool | str:
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    try:
        return _as_bool(value)
    except TypeError:
        raise TypeError("True, False or auto") from None


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError("an integer")
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError("a finite number")
    return float(value)


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _as_pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (isinstance(value, tuple | list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return (int(value[0]), int(value[1]))
    raise TypeError("a pair of integers like (9,9)")


def _as_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError('a list of names like ["dice_coef_multiclass"]')


# A colour of [mask] rgb_map mapped to this class is neither nucleus nor background: its pixels get an all-zero
# one-hot row, which the losses and training metrics skip (prep writes an outline GT's own line as (128,128,128)
# under --gt-rule auto-ignore-line).
IGNORE_CLASS = -1


def _as_rgb_map(value: Any) -> dict[tuple[int, int, int], int]:
    if not isinstance(value, dict) or not value:
        raise TypeError("a dict of RGB colour → class like {(0,0,0):0,(255,255,255):1}")
    result = {}
    for colour, index in value.items():
        if not (isinstance(colour, tuple) and len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255
                                                                         for c in colour)):
            raise TypeError(f"RGB triples of 0..255 as keys, got {colour!r}")
        if not isinstance(index, int) or isinstance(index, bool) or index < IGNORE_CLASS:
            raise TypeError(f"class indices ≥ 0 (or {IGNORE_CLASS}: ignored) as values, got {index!r}")
        result[colour] = index
    return result


def _as_optional_int(value: Any) -> int | None:
    return None if value is None else _as_int(value)


def _as_optional_str(value: Any) -> str | None:
    return None if value is None else _as_str(value)


def _as_optional_pair(value: Any) -> tuple[int, int] | None:
    return None if value is None else _as_pair(value)


# ---------------------------------------------------------------------------------------------- schema

@dataclass(frozen=True)
class Key:
    parse: Callable[[Any], Any]
    default: Any
    path: bool = False  # resolved against the config file's folder
    check: Callable[[Any], str | None] | None = None  # returns what was expected, or None when fine


def _positive(value) -> str | None:
    return None if value > 0 else "a positive value"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "a value ≥ 0"


def _fraction(value) -> str | None:
    return None if 0 <= value < 1 else "a value in [0, 1)"


def _as_choice(*choices: str) -> Callable[[Any], str]:
    """A parser for one of ``choices``, matched case-insensitively and returned in its canonical spelling, so
    the code that reads the value compares against one spelling (``Cosine`` must not silently mean plateau)."""
    canonical = {choice.lower(): choice for choice in choices}

    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in canonical:
            raise TypeError(f"one of {', '.join(choices)}")
        return canonical[value.lower()]
    return parse


def _as_choice_list(*choices: str, prefixes: tuple[str, ...] = ("",)) -> Callable[[Any], list[str]]:
    """A parser for a list of names from ``choices`` (each may carry one of ``prefixes``, e.g. val_)."""
    allowed = {prefix + choice for prefix in prefixes for choice in choices}

    def parse(value: Any) -> list[str]:
        names = _as_str_list(value)
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise TypeError(f"names from {', '.join(sorted(allowed))} (unknown: {', '.join(unknown)})")
        return names
    return parse


def _positive_pair(value) -> str | None:
    return None if value is None or min(value) > 0 else "positive sizes"


# [model] loss's and metrics' choices; train.losses.LOSSES / METRICS hold their functions (this module is read
# without Keras; a test keeps the two in step).
LOSS_NAMES = ("categorical_crossentropy", "dice_ce", "tversky_ce", "dice_hard_ce")
METRIC_NAMES = ("dice_coef_multiclass", "nucleus_dice", "nucleus_iou")
# [model] activation's choices: Keras' element-wise activations (a test checks each resolves in keras.activations).
ACTIVATION_NAMES = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish",
                    "hard_silu", "hard_swish", "tanh", "sigmoid", "hard_sigmoid", "softplus", "softsign", "linear")
COLOR_ORDERS = ("RGB", "BGR")  # [image] color_order's choices; train.data checks its callers against them too
MAX_BLUR_SIGMA = 4.0  # [train] random_blur's bound, in pixels: a nucleus is 20-30 px wide, more would erase it

SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "model": Key(_as_str, "TensorFlowFlexUNet"),
        "generator": Key(_as_bool, False),
        "image_width": Key(_as_int, 512, check=_positive),
        "image_height": Key(_as_int, 512, check=_positive),
        "image_channels": Key(_as_int, 3, check=lambda v: None if v in (1, 3) else "1 or 3"),
        "input_normalize": Key(_as_bool, False),
        "normalization": Key(_as_bool, False),
        "num_classes": Key(_as_int, 2, check=lambda v: None if v >= 2 else "at least 2"),
        "base_filters": Key(_as_int, 16, check=_positive),
        "base_kernels": Key(_as_pair, (9, 9)),
        "num_layers": Key(_as_int, 8, check=_positive),
        "dropout_rate": Key(_as_float, 0.02, check=_fraction),
        "dilation": Key(_as_pair, (1, 1), check=_positive_pair),
        "optimizer": Key(_as_choice("Adam", "AdamW"), "Adam"),
        "learning_rate": Key(_as_float, 7e-5, check=_positive),
        "clipvalue": Key(lambda v: None if v is None else _as_float(v), 0.4),
        "loss": Key(_as_choice(*LOSS_NAMES), "categorical_crossentropy"),
        "metrics": Key(_as_choice_list(*METRIC_NAMES), ["dice_coef_multiclass"]),
        "activation": Key(_as_choice(*ACTIVATION_NAMES), "relu"),
        # With num_classes ≥ 2 (always, here) the head is a softmax over classes whatever this says, as in the
        # reference; a name is still checked.
        "final_activation": Key(_as_choice("softmax", *ACTIVATION_NAMES), "softmax"),
        "show_summary": Key(_as_bool, False),
        # Ours: the network works at 1/downsample resolution (see train/flexunet.py).
        "downsample": Key(_as_int, 1, check=_positive),
        # Ours: 0 = off, else the odd box width (pixels) of the local-contrast input channel (train/flexunet.py).
        "local_contrast": Key(_as_int, 0, check=lambda v: None if v == 0 or (v >= 3 and v % 2) else
                              "0 (off) or an odd window of at least 3 pixels"),
    },
    "dataset": {
        "class_name": Key(_as_str, "ImageCategorizedMaskDataset"),
    },
    "train": {
        "epochs": Key(_as_int, 100, check=_positive),
        "batch_size": Key(_as_int, 2, check=_positive),
        "patience": Key(_as_int, 10, check=_non_negative),
        # The reference's list of the curves to watch: checked, each a compiled metric or the loss (val_ for the
        # validation split's); every compiled metric's curve is written whatever it holds.
        "metrics": Key(_as_choice_list("loss", *METRIC_NAMES, prefixes=("", "val_")),
                       ["dice_coef_multiclass", "val_dice_coef_multiclass"]),
        "model_dir": Key(_as_str, "./models/", path=True),
        "eval_dir": Key(_as_str, "./eval/", path=True),
        "images_dir": Key(_as_str, "../../../dataset/Tiled-EDF-Cervical-Cytology/train/images/", path=True),
        "masks_dir": Key(_as_str, "../../../dataset/Tiled-EDF-Cervical-Cytology/train/masks/", path=True),
        "create_backup": Key(_as_bool, False),
        "learning_rate_reducer": Key(_as_bool, True),
        "reducer_factor": Key(_as_float, 0.4, check=lambda v: None if 0 < v < 1 else "a value in (0, 1)"),
        "reducer_patience": Key(_as_int, 4, check=_non_negative),
        "epoch_change_infer": Key(_as_bool, True),
        "epoch_change_infer_dir": Key(_as_str, "./epoch_change_infer", path=True),
        "num_infer_images": Key(_as_int, 6, check=_non_negative),
        "save_weights_only": Key(_as_bool, True),
        "steps_per_epoch": Key(_as_optional_int, None, check=_positive),  # None: every tile once per epoch
        "validation_steps": Key(_as_optional_int, None, check=_positive),
        # Ours, beyond the reference:
        "seed": Key(_as_int, 137, check=lambda v: None if 0 <= v < 2**32 else "an integer from 0 to 2**32 - 1"),
        # auto: mixed precision where it is faster (a GPU; a CPU that computes bfloat16 natively), else float32.
        "mixed_precision": Key(_as_bool_or_auto, False),
        "strategy": Key(_as_choice("default", "mirrored", "multiworker"), "default"),
        "crop_size": Key(_as_optional_pair, None, check=_positive_pair),
        "crops_per_tile": Key(_as_int, 1, check=_positive),
        "random_flips": Key(_as_bool, False),
        "random_rotations": Key(_as_bool, False),
        # plateau: the reference's ReduceLROnPlateau (when learning_rate_reducer); cosine: decay to 1 % over the run
        # (epochs × steps_per_epoch, or max_train_seconds if that ends it first).
        "lr_schedule": Key(_as_choice("plateau", "cosine"), "plateau"),
        # False keeps the last epoch's weights (with a decaying LR, usually better than a noisy val_loss's pick).
        "save_best_only": Key(_as_bool, True),
        "intensity_jitter": Key(_as_float, 0.0, check=lambda v: None if 0 <= v < 1 else "a value in [0, 1)"),
        "random_scale": Key(_as_float, 0.0, check=lambda v: None if 0 <= v < 1 else "a value in [0, 1)"),
        "random_blur": Key(_as_float, 0.0, check=lambda v: None if 0 <= v <= MAX_BLUR_SIGMA
                           else f"a value in [0, {MAX_BLUR_SIGMA:g}] (pixels)"),
        "foreground_bias": Key(_as_float, 0.0, check=lambda v: None if 0 <= v <= 1 else "a value in [0, 1]"),
        "max_train_seconds": Key(lambda v: None if v is None else _as_float(v), None, check=_positive),
        # Stochastic weight averaging over the last share of the run (0 = off); see train/callbacks.py.
        "average_weights": Key(_as_float, 0.0, check=_fraction),
        # A trained-model folder (model.json beside its weights) to start from: fine-tuning on one's own fields.
        "init_weights": Key(_as_optional_str, None, path=True),
    },
    "valid": {
        "images_dir": Key(_as_str, "../../../dataset/Tiled-EDF-Cervical-Cytology/valid/images/", path=True),
        "masks_dir": Key(_as_str, "../../../dataset/Tiled-EDF-Cervical-Cytology/valid/masks/", path=True),
    },
    "test": {
        "images_dir": Key(_as_str, "../../../dataset/Tiled-EDF-Cervical-Cytology/test/images/", path=True),
        "masks_dir": Key(_as_str, "../../../dataset/Tiled-EDF-Cervical-Cytology/test/masks/", path=True),
    },
    "infer": {
        "images_dir": Key(_as_str, "./mini_test/images/", path=True),
        "output_dir": Key(_as_str, "./mini_test_output/", path=True),
    },
    "image": {
        "color_order": Key(_as_choice(*COLOR_ORDERS), "RGB"),
    },
    "mask": {
        "mask_file_format": Key(_as_str, ".png"),
        "rgb_map": Key(_as_rgb_map, {(0, 0, 0): 0, (255, 255, 255): 1}),
    },
}


def _section_class(name: str, keys: dict[str, Key]) -> type:
    """A frozen dataclass for one section: its attributes are the schema's keys (docs/config.md says what each
    means), typed by their defaults; once loaded, a config cannot be changed behind its checks."""
    fields = [(key, Any) for key in keys]
    section = dataclasses.make_dataclass(f"{name.title()}Section", fields, frozen=True)
    section.__doc__ = f"The [{name}] section: " + ", ".join(keys) + " (see docs/config.md)."
    return section


SECTIONS = {name: _section_class(name, keys) for name, keys in SCHEMA.items()}


@dataclass(frozen=True)
class Config:
    path: Path
    model: Any  # SECTIONS["model"], and so on: frozen dataclasses of each section's keys
    dataset: Any
    train: Any
    valid: Any
    test: Any
    infer: Any
    image: Any
    mask: Any
    raw: dict[str, dict[str, str]] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # the --set strings applied on top of the file

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def image_size(self) -> tuple[int, int]:
        return self.model.image_height, self.model.image_width

    def provenance_text(self) -> str:
        """The config file's text with this run's --set overrides appended as repeated sections, so the copy
        kept beside the weights rebuilds the same model (repeated sections merge, later values win). Path
        values are written resolved: the copy lives in another folder."""
        text = self.path.read_text(encoding="utf-8")
        if not self.overrides:
            return text
        lines = ["", "; --set overrides of this run (they take precedence over the values above)"]
        for override in self.overrides:
            section, key, value = parse_override(override)
            if SCHEMA[section][key].path:
                value = str(getattr(getattr(self, section), key))
            lines += [f"[{section}]", f"{key} = {value.strip()}"]
        return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def _convert(section: str, key: str, text: str, folder: Path, source: str) -> Any:
    spec = SCHEMA[section][key]
    value = _literal(text.strip())
    try:
        parsed = spec.parse(value)
    except TypeError as err:
        raise ConfigError(f"{source}: [{section}] {key} = {text.strip()}: expected {err}") from None
    if spec.check is not None and parsed is not None:
        expected = spec.check(parsed)
        if expected:
            raise ConfigError(f"{source}: [{section}] {key} = {text.strip()}: expected {expected}")
    if spec.path and parsed is not None:
        parsed = (folder / Path(parsed).expanduser()).resolve()
    if key == "base_kernels" and any(k <= 0 or k % 2 == 0 for k in parsed):
        raise ConfigError(f"{source}: [{section}] {key} = {text.strip()}: expected odd kernel sizes like (9,9)")
    return parsed


def parse_override(text: str) -> tuple[str, str, str]:
    """'train.epochs=3' → ('train', 'epochs', '3')."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=3")
    return section.strip().lower(), key.strip().lower(), value


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read, type and validate a config; ``overrides`` are 'section.key=value' strings (``--set``)."""
    path = Path(path).expanduser().resolve()
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"), strict=False)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    except configparser.Error as err:
        raise ConfigError(f"{path}: not an INI config ({err.message.splitlines()[0]})") from None

    raw: dict[str, dict[str, str]] = {name: {} for name in SCHEMA}
    for section in parser.sections():
        name = section.strip().lower()
        if name not in SCHEMA:
            warnings.warn(f"{path}: unknown section [{section}] ignored", stacklevel=2)
            continue
        for key, text in parser.items(section):
            if key not in SCHEMA[name]:
                warnings.warn(f"{path}: unknown key [{name}] {key} ignored", stacklevel=2)
                continue
            raw[name][key] = text
    for override in overrides:
        section, key, text = parse_override(override)
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(f"--set {override!r}: no such key [{section}] {key}")
        raw[section][key] = text

    sections = {}
    for name, keys in SCHEMA.items():
        values = {}
        for key, spec in keys.items():
            if key in raw[name]:
                values[key] = _convert(name, key, raw[name][key], path.parent, str(path))
            else:
                default = spec.default
                values[key] = (path.parent / default).resolve() if spec.path and default is not None else default
        sections[name] = SECTIONS[name](**values)
    config = Config(path=path, raw=raw, overrides=tuple(overrides), **sections)
    check_rules(config)
    return config


def check_rules(config: Config) -> None:
    """The rules between keys, all checked when the config is loaded, so a run that cannot work stops before
    it touches anything; each error names the file and the keys."""
    from train.architecture import check_architecture, pooling_multiple

    path, m, t = config.path, config.model, config.train
    classes = sorted(set(config.mask.rgb_map.values()) - {IGNORE_CLASS})
    if classes != list(range(m.num_classes)):
        raise ConfigError(f"{path}: [mask] rgb_map classes {classes} do not match [model] num_classes = "
                          f"{m.num_classes}")
    try:
        check_architecture(m.image_height, m.image_width, m.num_layers, m.base_kernels, m.dilation, m.downsample)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    multiple = pooling_multiple(m.num_layers, m.downsample)
    crop = t.crop_size
    if crop is not None and (crop[0] % multiple or crop[1] % multiple):
        raise ConfigError(f"{path}: [train] crop_size = {crop}: must be divisible by {multiple} "
                          f"([model] downsample × 2^(num_layers-1) = {m.downsample} × {2 ** (m.num_layers - 1)})")
    total_steps = t.epochs * t.steps_per_epoch if t.steps_per_epoch else None
    for setting, wanted in (('lr_schedule = "cosine"', t.lr_schedule == "cosine"),
                            (f"average_weights = {t.average_weights}", t.average_weights > 0)):
        if wanted and total_steps is None and not t.max_train_seconds:
            raise ConfigError(f"{path}: [train] {setting} needs steps_per_epoch or max_train_seconds to know how "
                              "long the run is")
    if t.average_weights > 0 and t.save_best_only:
        raise ConfigError(f"{path}: [train] average_weights = {t.average_weights} keeps the average of the run's "
                          "end, not one best epoch: set save_best_only = False")
