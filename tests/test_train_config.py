"""The INI config: the reference's file loads unchanged, values are literals (never eval), errors name keys."""

from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED
from train.config import IGNORE_CLASS, ConfigError, load_config

REFERENCE = SHARED / "data" / "reference-config" / "train_eval_infer.config"


@pytest.fixture
def reference_config() -> Path:
    if not REFERENCE.is_file():
        pytest.skip("../shared/data/reference-config is not available")
    return REFERENCE


def test_reference_config_loads_unchanged(reference_config: Path, recwarn):
    config = load_config(reference_config)
    m, t = config.model, config.train
    assert (m.image_width, m.image_height, m.image_channels, m.num_classes) == (512, 512, 3, 2)
    assert (m.base_filters, m.base_kernels, m.num_layers, m.dropout_rate, m.dilation) == (16, (9, 9), 8, 0.02, (1, 1))
    assert (m.optimizer, m.learning_rate, m.clipvalue, m.loss) == ("Adam", 7e-5, 0.4, "categorical_crossentropy")
    assert (t.epochs, t.batch_size, t.patience, t.reducer_factor, t.reducer_patience) == (100, 2, 10, 0.4, 4)
    assert t.save_weights_only is True and t.num_infer_images == 6
    assert config.mask.rgb_map == {(0, 0, 0): 0, (255, 255, 255): 1}
    # The reference ran from its config's folder: relative paths resolve there.
    expected = (reference_config.parent / "../../../dataset/Tiled-EDF-Cervical-Cytology/train/images/").resolve()
    assert t.images_dir == expected
    assert not [w for w in recwarn if "unknown" in str(w.message)]


def test_shipped_config_has_the_reference_values(reference_config: Path):
    ours = load_config(REPO / "configs" / "edf_cervical.config")
    theirs = load_config(reference_config)
    assert vars(ours.model) == vars(theirs.model)
    for key in ("epochs", "batch_size", "patience", "reducer_factor", "reducer_patience", "save_weights_only",
                "learning_rate_reducer", "num_infer_images"):
        assert getattr(ours.train, key) == getattr(theirs.train, key), key
    assert ours.train.images_dir == (REPO / "dataset/Tiled-EDF-Cervical-Cytology/train/images").resolve()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train_eval_infer.config"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ('[model]\nbase_kernels = "nine"\n', "[model] base_kernels"),
    ("[model]\nbase_kernels = (8,8)\n", "odd"),
    ("[model]\nnum_layers = 3.5\n", "[model] num_layers"),
    ("[model]\nlearning_rate = nan\n", "[model] learning_rate"),
    ("[model]\noptimizer = SGD\n", "[model] optimizer"),
    ("[model]\nloss = focal\n", "[model] loss"),
    ("[model]\nloss = 3\n", "[model] loss = 3: expected one of categorical_crossentropy"),
    ("[model]\nlocal_contrast = 8\n", "[model] local_contrast"),
    ("[train]\nbatch_size = 0\n", "[train] batch_size"),
    ("[train]\nsave_weights_only = maybe\n", "[train] save_weights_only"),
    ("[train]\nmixed_precision = bf16\n", "[train] mixed_precision = bf16: expected True, False or auto"),
    ("[train]\nrandom_scale = 1.5\n", "[train] random_scale"),
    ("[train]\nintensity_jitter = -0.1\n", "[train] intensity_jitter"),
    ("[train]\nrandom_blur = 5\n", "[train] random_blur"),
    ("[train]\naverage_weights = 1.0\n", "[train] average_weights"),
    ("[train]\nsteps_per_epoch = 0\n", "[train] steps_per_epoch = 0: expected a positive value"),
    ("[train]\nsteps_per_epoch = -3\n", "[train] steps_per_epoch"),
    ("[train]\nvalidation_steps = 0\n", "[train] validation_steps"),
    ("[train]\nmax_train_seconds = -5\n", "[train] max_train_seconds = -5: expected a positive value"),
    ("[mask]\nrgb_map = {(0,0,0):0,(255,255):1}\n", "[mask] rgb_map"),
    ("[mask]\nrgb_map = {(0,0,0):0,(255,255,255):2}\n", "num_classes"),
    ("[mask]\nrgb_map = {(0,0,0):0,(255,255,255):1,(128,128,128):-2}\n", "[mask] rgb_map"),
    ("[mask]\nrgb_map = {(0,0,0):0,(128,128,128):-1}\n", "num_classes"),  # -1 is no class
    ("[mask]\nrgb_map = {[0,0,0]:0,(255,255,255):1}\n", "[mask] rgb_map"),  # a list cannot be a key
    ("[train]\nseed = -1\n", "[train] seed = -1: expected an integer from 0 to 2"),
    ("[train]\nseed = 4294967296\n", "[train] seed"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, expected: str):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_a_colour_may_be_mapped_to_the_ignored_class(tmp_path: Path):
    config = load_config(write(tmp_path, "[mask]\nrgb_map = {(0,0,0):0,(255,255,255):1,(128,128,128):-1}\n"))
    assert config.mask.rgb_map[(128, 128, 128)] == IGNORE_CLASS == -1


def test_choices_take_any_case_and_come_back_in_one_spelling(tmp_path: Path):
    # The code compares against one spelling: "Cosine" must mean cosine, not fall through to plateau.
    config = load_config(write(tmp_path, "[model]\noptimizer = adamw\nloss = Dice_CE\n"
                                         "[train]\nlr_schedule = Cosine\nstrategy = MIRRORED\nsteps_per_epoch = 2\n"
                                         "[image]\ncolor_order = bgr\n"))
    assert (config.model.optimizer, config.model.loss) == ("AdamW", "dice_ce")
    assert (config.train.lr_schedule, config.train.strategy, config.image.color_order) == ("cosine", "mirrored", "BGR")
    for written, meant in (("Auto", "auto"), ("True", True), ("off", False)):
        precision = load_config(write(tmp_path, f"[train]\nmixed_precision = {written}\n")).train.mixed_precision
        assert precision == meant and type(precision) is type(meant)


def test_config_values_are_never_evaluated(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"[model]\nmodel = __import__('os').system('touch {marker}')\n")
    config = load_config(path)
    assert not marker.exists()
    assert config.model.model.startswith("__import__")  # kept as inert text


def test_unknown_keys_warn_by_name(tmp_path: Path):
    with pytest.warns(UserWarning, match=r"\[train\] epoch_count"):
        load_config(write(tmp_path, "[train]\nepoch_count = 3\n"))


def test_overrides(tmp_path: Path):
    path = write(tmp_path, "[train]\nepochs = 5\nmodel_dir = ./m\n")
    config = load_config(path, ["train.epochs=2", "model.base_kernels=(3,3)", "train.model_dir = out/models"])
    assert config.train.epochs == 2 and config.model.base_kernels == (3, 3)
    assert config.train.model_dir == (tmp_path / "out" / "models").resolve()
    with pytest.raises(ConfigError, match="no such key"):
        load_config(path, ["train.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["epochs=3"])
    tuned = write(tmp_path, '[train]\ninit_weights = "base/models"\n')
    assert load_config(tuned).train.init_weights == (tmp_path / "base" / "models").resolve()
    assert load_config(tuned, ["train.init_weights=None"]).train.init_weights is None  # its documented default


def test_unreadable_configs(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.config")
    binary = tmp_path / "binary.config"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ConfigError, match="binary.config"):
        load_config(binary)
    with pytest.raises(ConfigError, match="not an INI"):
        load_config(write(tmp_path, "epochs = 3\n"))


def test_local_contrast_key_reaches_the_model(tmp_path: Path):
    from train.model import build_model

    text = "[model]\nimage_width = 64\nimage_height = 64\nimage_channels = 1\nbase_kernels = (3,3)\nnum_layers = 3\n"
    assert load_config(write(tmp_path, text)).model.local_contrast == 0  # off unless asked: reference unchanged
    plain = build_model(load_config(write(tmp_path, text)))
    model = build_model(load_config(write(tmp_path, text + "local_contrast = 31\n")))
    assert "local_contrast" not in {layer.name for layer in plain.layers}
    assert model.get_layer("local_contrast").window == 31


def test_provenance_copy_keeps_the_overrides_and_rebuilds_the_same_config(tmp_path: Path):
    path = write(tmp_path, "[model]\nnum_layers = 4 ; a comment\nbase_kernels = (5,5)\n[train]\nepochs = 5\n")
    config = load_config(path, ["model.num_layers=3", "model.dropout_rate=0.1", "train.model_dir=runs/m"])
    assert path.read_text().endswith("epochs = 5\n") and config.provenance_text().startswith(path.read_text())
    copy = tmp_path / "elsewhere" / "train_eval_infer.config"
    copy.parent.mkdir()
    copy.write_text(config.provenance_text())
    again = load_config(copy)
    assert again.model.num_layers == 3 and again.model.dropout_rate == 0.1 and again.model.base_kernels == (5, 5)
    assert again.train.model_dir == (tmp_path / "runs" / "m").resolve()  # resolved, not relative to the copy
    assert load_config(path).provenance_text() == path.read_text()  # no overrides: the file as it is


def test_the_config_reference_lists_every_key_with_its_default():
    import ast
    import re

    from tests.conftest import REPO
    from train.config import SCHEMA

    table = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `\[(\w+\] \w+)` \| `([^`]*)` \|", table, re.MULTILINE))
    keys = {f"{section}] {key}" for section, keys in SCHEMA.items() for key in keys}
    assert set(rows) == keys, (sorted(keys - set(rows)), sorted(set(rows) - keys))
    for name, text in rows.items():
        section, key = name.split("] ")
        default = SCHEMA[section][key].default
        try:
            documented = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            documented = text  # a bare word, as the config itself reads it
        assert documented == default, (name, text, default)


def test_a_loaded_config_cannot_be_changed_behind_its_checks(tmp_path: Path):
    import dataclasses

    config = load_config(write(tmp_path, "[model]\nnum_layers = 3\n[train]\ncrop_size = (64,64)\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.crop_size = (66, 66)  # would skip the divisibility rule checked at load
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = config.train
    assert type(config.train).__name__ == "TrainSection" and config.train.crop_size == (64, 64)
