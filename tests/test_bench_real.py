"""bench-real's plumbing on a tiny run (the 15-minute training is a benchmark, not a test), and the folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tests.conftest import REPO, write_edf_folder

sys.path.insert(0, str(REPO / "bench"))

from bench_real import SYNTH_VALID_FIELDS, bench_real  # noqa: E402
from make_folds import field_edges_of, make_folds, source_of  # noqa: E402

TINY = """
[model]
image_width = 64
image_height = 64
image_channels = 1
normalization = True
num_classes = 2
base_filters = 4
base_kernels = (3,3)
num_layers = 3
loss = "dice_ce"
[train]
epochs = 2
batch_size = 4
steps_per_epoch = 3
crop_size = (32,32)
crops_per_tile = 2
foreground_bias = 0.5
random_flips = True
num_infer_images = 1
max_train_seconds = 60
[mask]
rgb_map = {(0,0,0):0,(255,255,255):1,}
"""


def tiny_bench_inputs(tmp_path: Path, train_count: int, test_count: int = 1,
                      test_size: tuple[int, int] = (128, 128)) -> tuple[Path, Path, Path]:
    """TRAIN_EDF and TEST_EDF folders of synthetic ISBI-layout images, and the tiny config, under tmp_path."""
    train_edf = write_edf_folder(tmp_path / "train", count=train_count, height=128, width=128, seed=1)
    test_edf = write_edf_folder(tmp_path / "test", count=test_count, height=test_size[0], width=test_size[1], seed=2)
    config = tmp_path / "tiny.config"
    config.write_text(TINY)
    return train_edf, test_edf, config


def test_tiny_bench_real_reports_scores_on_the_held_out_images(tmp_path: Path):
    train_edf, test_edf, config = tiny_bench_inputs(tmp_path, train_count=4, test_count=2, test_size=(100, 140))
    (test_edf / "field_edges.csv").write_text("file,field_edges\nEDF001.png,\n")  # an inner tile; EDF000 a field
    summary = bench_real(train_edf, test_edf, tmp_path / "out", config, [],
                         ["--tta", "--min-area", "5", "--min-confidence", "0", "--exclude-border"])
    assert summary["infer_flags"].endswith(f"--exclude-border --field-edges {test_edf / 'field_edges.csv'}")
    options = summary["infer_options"]  # what the flags came to, the preset's values filled in
    assert (options["min_area"], options["min_confidence"], options["mode"], options["exclude_border"]) == (
        5, 0.0, "whole", True)
    whole_field = cv2.imread(str(tmp_path / "out" / "infer" / "EDF000.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert not (whole_field[0].any() or whole_field[-1].any() or whole_field[:, 0].any() or whole_field[:, -1].any())
    for key in ("nucleus_dice", "nucleus_iou", "object_dice", "fnro", "f1"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["train_seconds"] > 0 and summary["epochs"] == 2 and summary["test_images"] == 2
    assert summary["steps"] == 2 * 3 and summary["train_precision"] == "float32"  # TINY: 2 epochs of 3 steps
    assert len(summary["train_sources"]) == 4 and summary["valid_sources"] == []  # every real source trains
    # By default every real training tile gets three pale-nucleus copies (DEFAULT_PREP_FLAGS).
    train_tiles = [p.name for p in (tmp_path / "out" / "dataset" / "train" / "images").glob("*.png")]
    originals = [name for name in train_tiles if name.startswith("EDF")]
    for factor in ("0.3", "0.45", "0.6"):
        assert len([name for name in train_tiles if name.startswith(f"faded_{factor}_")]) == len(originals), factor
    assert summary["nucleus_dice"] == pytest.approx(sum(summary["per_image_dice"].values()) / 2, abs=1e-3)
    json.dumps(summary)  # the bench prints it as its last line


def test_synthetic_fields_join_training_and_one_more_is_the_validation_split(tmp_path: Path):
    train_edf, test_edf, config = tiny_bench_inputs(tmp_path, train_count=3)
    out = tmp_path / "out"
    summary = bench_real(train_edf, test_edf, out, config, ["train.epochs=1"], [], synth=2)
    real_tiles = sorted(p.name for p in (out / "dataset" / "train" / "images").glob("*.png"))
    synth_tiles = sorted(p.name for p in (out / "synth-dataset" / "train" / "images").glob("*.png"))
    mixed = sorted(p.name for p in (out / "train-mix" / "images").glob("*.png"))
    assert real_tiles and synth_tiles and summary["synth_images"] == 2 and summary["valid_on"] == "synth"
    assert mixed == sorted([f"dataset_{n}" for n in real_tiles] + [f"synth-dataset_{n}" for n in synth_tiles])
    assert summary["train_tiles"] == len(mixed)
    for kind in ("images", "masks"):
        assert all(link.resolve().is_file() for link in (out / "train-mix" / kind).iterdir())
    # Every real source trains; the run is monitored on one more synthetic field, whole, that never trains.
    assert summary["valid_sources"] == [] and not list((out / "dataset" / "valid" / "images").glob("*.png"))
    synth_record = json.loads((out / "synth-dataset" / "prep.json").read_text())["splits"]
    assert len(synth_record["train"]) == 2 and len(synth_record["valid"]) == SYNTH_VALID_FIELDS
    assert set(synth_record["train"]).isdisjoint(synth_record["valid"])
    assert list((out / "synth-dataset" / "valid" / "images").glob("*.png"))
    assert list((out / "epoch_change_infer").glob("epoch_*.png"))  # the montage of validation tiles was drawn
    assert summary["test_images"] == 1


def test_synth_only_trains_on_no_real_pixel(tmp_path: Path):
    train_edf, test_edf, config = tiny_bench_inputs(tmp_path, train_count=2)
    out = tmp_path / "out"
    summary = bench_real(train_edf, test_edf, out, config, ["train.epochs=1"], [], synth=2, synth_only=True)
    assert not (out / "dataset").exists()  # the real fields were not even tiled
    mixed = sorted(p.name for p in (out / "train-mix" / "images").glob("*.png"))
    assert mixed and all(name.startswith("synth-dataset_") for name in mixed)
    assert summary["synth_only"] and len(summary["train_sources"]) == 2
    assert all((out / "synth-edf" / f"{name}.png").is_file() for name in summary["train_sources"])
    assert summary["test_images"] == 1
    with pytest.raises(ValueError, match="synth_only"):
        bench_real(train_edf, test_edf, tmp_path / "none", config, [], [], synth=0, synth_only=True)


def test_valid_on_real_holds_real_sources_out_of_training(tmp_path: Path):
    train_edf, test_edf, config = tiny_bench_inputs(tmp_path, train_count=5)
    out = tmp_path / "out"
    summary = bench_real(train_edf, test_edf, out, config, ["train.epochs=1"], [], valid_on="real")
    assert summary["valid_on"] == "real" and len(summary["valid_sources"]) == 1 and len(summary["train_sources"]) == 4
    assert set(summary["train_sources"]).isdisjoint(summary["valid_sources"])
    assert not (out / "synth-dataset").exists()  # no synthetic field is made when neither split needs one
    with pytest.raises(ValueError, match="valid_on"):
        bench_real(train_edf, test_edf, tmp_path / "bad", config, [], [], valid_on="test")


def test_prep_flags_augment_the_real_tiles_only(tmp_path: Path):
    train_edf, test_edf, config = tiny_bench_inputs(tmp_path, train_count=3)
    out = tmp_path / "out"
    summary = bench_real(train_edf, test_edf, out, config, ["train.epochs=1"], [], synth=1,
                         prep_flags=["--fade-factors", "0.4"])
    assert summary["prep_flags"] == "--fade-factors 0.4"
    real_tiles = [p.name for p in (out / "dataset" / "train" / "images").glob("*.png")]
    faded = [name for name in real_tiles if name.startswith("faded_0.4_")]
    flipped = [name for name in real_tiles if name.startswith("hflipped_")]
    assert faded and len(faded) == len(flipped)  # one pale copy of every original tile, like each flip
    assert not [p for p in (out / "synth-dataset").rglob("*.png") if p.name.startswith("faded_")]
    kinds = [a["kind"] for a in json.loads((out / "dataset" / "prep.json").read_text())["settings"]["augmentations"]]
    assert kinds.count("fade") == 1
    with pytest.raises(SystemExit, match="--fade-factors"):
        bench_real(train_edf, test_edf, tmp_path / "bad", config, [], [], prep_flags=["--fade-factors", "2"])


def test_source_ids_come_from_the_reference_names():
    assert source_of("10001_1x0") == "10001"
    assert source_of("barrdistorted_1003_0.3_0.3_10001_0x0") == "10001"
    assert source_of("deformed_alpha_1300_sigmoid_10_10010_1x0") == "10010"


def test_folds_hold_each_source_out_once_and_never_leak(real_data: Path, tmp_path: Path):
    folds = make_folds(real_data / "tiles", tmp_path, 3)
    held = [s for fold in folds for s in fold["test_sources"]]
    assert sorted(held) == sorted(set(held)) and len(held) == 6  # 6 sources, each held out exactly once
    for fold in folds:
        train = {source_of(p.stem.removeprefix("EDF_")) for p in (tmp_path / f"fold{fold['fold']}" / "train")
                 .glob("*.png") if not p.stem.endswith("_GT")}
        test = {source_of(p.stem.removeprefix("EDF_")) for p in (tmp_path / f"fold{fold['fold']}" / "test")
                .glob("*.png") if not p.stem.endswith("_GT")}
        assert train.isdisjoint(test) and test == set(fold["test_sources"])
        edges = (tmp_path / f"fold{fold['fold']}" / "test" / "field_edges.csv").read_text().splitlines()
        images = sorted(p.name for p in (tmp_path / f"fold{fold['fold']}" / "test").glob("*.png")
                        if not p.stem.endswith("_GT"))
        assert edges[0] == "file,field_edges" and sorted(line.split(",")[0] for line in edges[1:]) == images
        for line in edges[1:]:
            name, listed = line.split(",")
            assert listed == " ".join(field_edges_of(name.removeprefix("EDF_").removesuffix(".png"), 2))
        assert not (tmp_path / f"fold{fold['fold']}" / "train" / "field_edges.csv").exists()


def test_field_edges_follow_the_tile_position_in_its_field():
    assert field_edges_of("barrdistorted_1003_0.3_0.3_10001_0x0", 2) == ("top", "left")
    assert field_edges_of("10001_1x0", 2) == ("bottom", "left")
    assert field_edges_of("10006_1x1", 2) == ("bottom", "right")
    assert field_edges_of("7_1x1", 3) == ()  # the middle of a 3×3 field touches no field edge
    assert field_edges_of("7_0x0", 1) == ("top", "bottom", "left", "right")  # the tile is the field
    with pytest.raises(ValueError, match="7_2x0: row 2, column 0 lie outside a 2×2 field"):
        field_edges_of("7_2x0", 2)


def test_real_ground_truth_leaves_out_the_nuclei_cut_by_the_field_edge(real_data: Path):
    """The premise of bench-real's field edges: the reference's real tiles annotate nuclei cut by a tile's inner
    edges but (nearly) never those cut by its source field's edge, read from its <row>x<col> in a 2×2 field."""
    from infer.measure import EDGES, clean_mask

    def nuclei(mask):
        return cv2.connectedComponents(mask.astype("uint8"), connectivity=8)[0] - 1

    on_field_edge = on_inner_edge = 0
    for path in sorted((real_data / "tiles" / "masks").glob("*.png")):
        truth = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127
        field = field_edges_of(path.stem, 2)
        inner = tuple(edge for edge in EDGES if edge not in field)
        on_field_edge += nuclei(truth) - nuclei(clean_mask(truth, exclude_border=True, field_edges=field))
        on_inner_edge += nuclei(truth) - nuclei(clean_mask(truth, exclude_border=True, field_edges=inner))
    assert on_field_edge <= 1 and on_inner_edge >= 15  # measured: 1 and 17 of 118 nuclei


@pytest.mark.parametrize(("given", "passed"), [
    ([], None),  # not given: bench_real.py's own default (the pale copies)
    (["PREP_FLAGS="], "--prep-flags ''"),  # given empty: no extra prep flags at all
    (["PREP_FLAGS=--fade-factors 0.5"], "--prep-flags '--fade-factors 0.5'"),
])
def test_make_bench_targets_pass_prep_flags_whenever_given(given: list[str], passed: str | None):
    for target in (["bench-real", "TRAIN_EDF=a", "TEST_EDF=b"], ["bench-folds"]):
        dry_run = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), *target, *given],
                                 capture_output=True, text=True, check=True).stdout
        command = dry_run[dry_run.index("bench/bench_"):]
        if passed is None:
            assert "--prep-flags" not in command, target
        else:
            assert passed in command, target


def test_a_budget_that_bought_few_steps_is_warned_of():
    from bench_real import FULL_BUDGET_STEPS, few_steps_warning

    assert few_steps_warning(None) is None and few_steps_warning(FULL_BUDGET_STEPS) is None
    warning = few_steps_warning(700, "float32")
    assert "700 training steps" in warning and "at float32" in warning
    assert "--set train.max_train_seconds=None --set train.epochs=100" in warning


def test_an_ignored_line_without_its_class_is_refused_before_any_step(tmp_path: Path):
    from bench_real import check_ignored_colour, main
    from click.testing import CliRunner

    ignoring = {(0, 0, 0): 0, (255, 255, 255): 1, (128, 128, 128): -1}
    check_ignored_colour(["--gt-rule", "auto-ignore-line"], ignoring)
    check_ignored_colour(["--gt-rule", "auto-interior"], {(0, 0, 0): 0, (255, 255, 255): 1})
    for flags in (["--fade-factors", "0.3", "--gt-rule", "auto-ignore-line"], ["--mask-rule=auto-ignore-line"]):
        with pytest.raises(ValueError, match=r"\(128,128,128\):-1"):
            check_ignored_colour(flags, {(0, 0, 0): 0, (255, 255, 255): 1})
    edf = write_edf_folder(tmp_path / "edf", count=1)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--train-edf", str(edf), "--test-edf", str(edf), "--out", str(out),
                                       "--prep-flags", "--gt-rule auto-ignore-line"])
    assert result.exit_code == 1 and "mask.rgb_map" in result.output and "Traceback" not in result.output
    assert not out.exists()  # refused before the first tile
