"""The trained-model folder describes itself (as nnU-Net's does): ``model.json`` beside the weights and the config
copy says what the model is, what it was trained on and with what, so ``infer --model DIR`` needs nothing else.

No Keras here: the card is written from the config, the run's summary and the files; it is read back by infer.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from prep.edf import file_sha256
from train.config import Config, ConfigError, load_config

CARD_NAME = "model.json"
CARD_FORMAT = "edf-nucleus-seg model folder"
CARD_VERSION = 1
ARCHITECTURE_KEYS = ("image_height", "image_width", "image_channels", "num_classes", "base_filters", "base_kernels",
                     "num_layers", "dropout_rate", "dilation", "normalization", "activation", "downsample",
                     "local_contrast")
VERSIONED = ("edf-nucleus-seg", "tensorflow", "keras", "numpy", "opencv-python-headless")


def tile_list_sha256(paths: Sequence[str | Path]) -> str:
    """A checksum of which tiles a run read (their names in order), not of their bytes: cheap for any dataset."""
    return hashlib.sha256("\n".join(Path(p).name for p in paths).encode()).hexdigest()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def architecture(config: Config) -> dict:
    values = {key: getattr(config.model, key) for key in ARCHITECTURE_KEYS}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def model_card(config: Config, weights: Path, summary: dict, train_pairs, valid_pairs, parameters: int) -> dict:
    """What model.json holds (see docs/model-folder.md for each field)."""
    return {
        "format": CARD_FORMAT, "version": CARD_VERSION,
        "config": config.path.name,
        "weights": weights.name, "weights_sha256": file_sha256(weights),
        "architecture": {**architecture(config), "parameters": parameters},
        "input": {"channels": config.model.image_channels, "color_order": config.image.color_order,
                  "scaling": "uint8 / 255", "grey": "ITU-R BT.601 luma of RGB (0.299, 0.587, 0.114), rounded"},
        "classes": ["background", "nucleus"][: config.model.num_classes] if config.model.num_classes <= 2
        else [f"class {k}" for k in range(config.model.num_classes)],
        "training_data": {
            "train_images_dir": str(config.train.images_dir), "train_masks_dir": str(config.train.masks_dir),
            "train_tiles": len(train_pairs[0]), "train_tile_list_sha256": tile_list_sha256(train_pairs[0]),
            "valid_images_dir": str(config.valid.images_dir), "valid_tiles": len(valid_pairs[0]),
            "valid_tile_list_sha256": tile_list_sha256(valid_pairs[0]),
        },
        "seed": config.train.seed,
        "trained": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "epochs": summary["epochs"], "train_seconds": round(summary["seconds"], 1),
        "train_precision": summary.get("precision"),  # the Keras policy it trained at ([train] mixed_precision)
        "best_val_loss": summary["best_val_loss"],
        "versions": versions(),
        "scores": {},  # filled by whoever measures it (train evaluate, the benches)
    }


def write_card(folder: Path, card: dict) -> Path:
    target = folder / CARD_NAME
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(card, indent=1, allow_nan=False, default=str) + "\n")
    partial.replace(target)
    return target


def read_card(folder: Path) -> dict:
    """A model folder's card; a ConfigError names what is missing or wrong."""
    path = folder / CARD_NAME
    if not folder.is_dir():
        raise ConfigError(f"{folder}: --model is not a folder")
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no model card: --model needs a folder that `train fit` wrote (its model_dir), "
                          "or give --config") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the model card ({err})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ConfigError(f"{path}: not a model card of this tool")
    if card.get("version", 0) > CARD_VERSION:
        raise ConfigError(f"{path}: card version {card['version']} is newer than this tool reads ({CARD_VERSION})")
    for key in ("config", "weights"):
        if not (folder / str(card.get(key, ""))).is_file():
            raise ConfigError(f"{path}: its {key} file {card.get(key)!r} is not in {folder}")
    return card


def init_weights_of(config: Config) -> Path | None:
    """The weights ``[train] init_weights`` names, checked against this config's architecture before any work:
    a ConfigError names the keys that differ."""
    folder = config.train.init_weights
    if folder is None:
        return None
    card = read_card(Path(folder))
    theirs = card.get("architecture", {})
    ours = architecture(config)
    differ = [f"{key} {theirs.get(key)!r} ≠ {value!r}" for key, value in ours.items() if theirs.get(key) != value]
    if differ:
        raise ConfigError(f"{config.path}: [train] init_weights = {folder}: another architecture "
                          f"({'; '.join(differ)}): fine-tuning needs the same [model] settings")
    return Path(folder) / card["weights"]


def config_of_model(folder: Path, overrides: Sequence[str] = ()) -> Config:
    """The config a model folder's weights were trained with, its model_dir pointing at the folder itself."""
    folder = folder.expanduser().resolve()
    card = read_card(folder)
    return load_config(folder / card["config"], [f"train.model_dir={str(folder)!r}", *overrides])
