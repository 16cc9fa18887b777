"""bench-folds: the per-fold summaries combine into honest means, and the CLI runs every fold end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import REPO, random_pair, write_edf_folder
from tests.test_bench_real import TINY

sys.path.insert(0, str(REPO / "bench"))

from bench_folds import (  # noqa: E402
    ERROR_CROP,
    combine,
    error_crops,
    fold_line,
    main,
    montage,
    peer_budget,
    short_budget_warning,
)
from make_folds import main as make_folds_main  # noqa: E402
from make_folds import make_field_folds, make_folds  # noqa: E402


def fold(k: int, dice_by_image: dict[str, float], fnro: float, seconds: float) -> dict:
    mean = round(float(np.mean(list(dice_by_image.values()))), 4)
    return {"fold": k, "test_sources": [f"s{k}"], "nucleus_dice": mean,
            "nucleus_iou": 0.5, "object_dice": 0.9, "fnro": fnro, "f1": 0.8, "outline_dice": 0.95, "n_extra": k + 1,
            "n_missed": 2, "per_image_dice": dice_by_image,
            "train_seconds": seconds, "epochs": 3, "test_images": len(dice_by_image)}


def test_folds_weigh_the_same_however_many_images_they_hold():
    folds = [fold(0, {"a": 0.8, "b": 1.0, "c": 0.9}, fnro=0.1, seconds=10.0),
             fold(1, {"d": 0.5}, fnro=0.3, seconds=5.0)]
    combined = combine(folds)
    assert combined["nucleus_dice"] == pytest.approx((0.9 + 0.5) / 2)       # mean over folds
    assert combined["nucleus_dice_images"] == pytest.approx((0.8 + 1.0 + 0.9 + 0.5) / 4)  # mean over images
    assert combined["fnro"] == pytest.approx(0.2)
    assert combined["nucleus_dice_min"] == 0.5
    assert combined["test_images"] == 4 and combined["train_seconds"] == 15.0
    assert combined["n_extra"] == 1 + 2 and combined["n_missed"] == 4 and combined["outline_dice"] == 0.95
    assert combined["folds"] == folds
    with pytest.raises(ValueError):
        combine([])


def test_per_field_scores_are_kept_with_their_fold():
    folds = [fold(0, {"a": 0.8, "b": 1.0}, fnro=0.1, seconds=10.0), fold(1, {"c": 0.7}, fnro=0.3, seconds=12.0)]
    folds[0]["per_image"] = {"a": {"nucleus_dice": 0.8, "f1": 0.9, "fnro": 0.1, "n_extra": 1, "n_missed": 0,
                                   "infer_seconds": 1.0},
                             "b": {"nucleus_dice": 1.0, "f1": 1.0, "fnro": 0.0, "n_extra": 0, "n_missed": 0,
                                   "infer_seconds": 3.0}}
    folds[1]["per_image"] = {"c": {"nucleus_dice": 0.7, "f1": 0.5, "fnro": 0.5, "n_extra": 2, "n_missed": 3,
                                   "infer_seconds": 2.0}}
    combined = combine(folds)
    assert combined["images"]["c"] == {"fold": 1, **folds[1]["per_image"]["c"]}
    assert combined["field_dice_min"] == 0.7 and combined["train_seconds_max"] == 12.0
    assert combined["f1_images"] == pytest.approx((0.9 + 1.0 + 0.5) / 3)
    assert combined["infer_seconds_per_image"] == pytest.approx(2.0)


def test_a_fold_short_of_epochs_is_named_and_an_even_run_is_not():
    folds = [fold(k, {f"f{k}": 0.9}, fnro=0.1, seconds=850.0) for k in range(3)]
    for one, epochs in zip(folds, (100, 97, 58), strict=True):  # fold 2 trained on a host at about half speed
        one["epochs"] = epochs
    combined = combine(folds)
    assert (combined["epochs_min"], combined["epochs_max"]) == (58, 100)
    warning = short_budget_warning(combined)
    assert "fold2 58" in warning and "fold1" not in warning and "58-100" in warning
    folds[2]["epochs"] = 90  # within 85 % of the most: one training length
    assert short_budget_warning(combine(folds)) is None
    del folds[0]["epochs"]  # a summary from before epochs were kept: no range, no warning
    assert "epochs_min" not in combine(folds) and short_budget_warning(combine(folds)) is None


def test_whole_field_folds_never_put_a_field_on_both_sides(tmp_path: Path):
    fields = write_edf_folder(tmp_path / "EDF", count=10, height=64, width=64)
    folds = make_field_folds(fields, tmp_path / "folds", 5)
    assert [f["test_sources"] for f in folds] == [["EDF000", "EDF005"], ["EDF001", "EDF006"], ["EDF002", "EDF007"],
                                                  ["EDF003", "EDF008"], ["EDF004", "EDF009"]]
    held_out = []
    for f in folds:
        folder = tmp_path / "folds" / f"fold{f['fold']}"
        test = {p.name for p in (folder / "test").iterdir()}
        train = {p.name for p in (folder / "train").iterdir()}
        assert test == {f"{n}{s}.png" for n in f["test_sources"] for s in ("", "_GT")}
        assert train == {f"{n}{s}.png" for n in f["train_sources"] for s in ("", "_GT")}
        assert test.isdisjoint(train) and len(test) + len(train) == 20
        for name in test:  # the pairs themselves, byte for byte
            assert (folder / "test" / name).read_bytes() == (fields / name).read_bytes()
        held_out += f["test_sources"]
    assert sorted(held_out) == [f"EDF{i:03d}" for i in range(10)]  # every field tested exactly once
    with pytest.raises(ValueError, match="10 fields cannot make 11 folds"):
        make_field_folds(fields, tmp_path / "more", 11)
    (fields / "EDF003_GT.png").unlink()
    with pytest.raises(ValueError, match="EDF003.png: image without ground truth"):
        make_field_folds(fields, tmp_path / "broken", 2)
    assert not (tmp_path / "broken").exists()


def test_cli_runs_whole_field_folds_and_reports_every_field(tmp_path: Path):
    fields = write_edf_folder(tmp_path / "EDF", count=4, height=128, width=128)
    config = tmp_path / "tiny.config"
    config.write_text(TINY)
    out = tmp_path / "out"
    run_args = ["--fields", str(fields), "--folds", "2", "--out", str(out), "--config", str(config), "--synth", "0",
                "--set", "train.epochs=1", "--prep-flags", "", "--infer-flags", "--min-area 5 --exclude-border"]
    result = CliRunner().invoke(main, run_args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert all(json.loads((out / f"fold{k}" / "summary.json").read_text()) == summary["folds"][k] for k in (0, 1))
    assert sorted(summary["images"]) == [f"EDF{i:03d}.png" for i in range(4)]
    for name, image in summary["images"].items():
        fold = summary["folds"][image["fold"]]
        assert name[:-4] in fold["test_sources"] and name[:-4] not in fold["train_sources"]
        assert set(image) == {"fold", "nucleus_dice", "f1", "fnro", "n_extra", "n_missed", "infer_seconds"}
        assert image["nucleus_dice"] == fold["per_image_dice"][name] and image["infer_seconds"] > 0
    for f in summary["folds"]:  # whole fields: every edge is the field's, no field_edges.csv
        assert f["infer_flags"] == "--min-area 5 --exclude-border"
    fold_lines = [line for line in result.output.splitlines() if line.startswith("fold")]
    assert len(fold_lines) == 2 and all("object F1" in line and "s per image at inference" in line
                                        for line in fold_lines)
    assert summary["field_dice_min"] == min(image["nucleus_dice"] for image in summary["images"].values())
    assert CliRunner().invoke(main, ["--out", str(tmp_path / "x")]).exit_code == 2  # neither --fields nor --tiles
    # Stopped in fold 1 (its summary never written): --resume keeps fold 0 as it was and runs fold 1 again.
    (out / "fold1" / "summary.json").unlink()
    backup = out / "fold1" / "models" / "backup"  # what train fit would resume from, clock restarted: never
    backup.mkdir()
    (backup / "latest.weights.h5").write_bytes(b"the stopped fold's last epoch")
    kept_model = out / "fold0" / "models" / "best.weights.h5"
    kept_stamp = kept_model.stat().st_mtime_ns
    other = CliRunner().invoke(main, [*run_args, "--resume", "--set", "train.epochs=2"])
    assert other.exit_code != 0 and "overrides" in other.output and "train.epochs=2" in other.output
    assert not (out / "fold1" / "summary.json").exists()
    resumed = CliRunner().invoke(main, [*run_args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "kept from the stopped run: fold0" in resumed.output
    assert kept_model.stat().st_mtime_ns == kept_stamp  # fold 0 was not trained again
    finished = json.loads(resumed.output.strip().splitlines()[-1])
    assert finished["folds"][0] == summary["folds"][0]
    assert finished["folds"][1]["per_image_dice"] == summary["folds"][1]["per_image_dice"]  # same seed, same fold
    assert (out / "fold1" / "summary.json").is_file() and not backup.exists()  # fold 1 trained from scratch
    assert finished.get("code") == summary.get("code")  # the commit(s) the folds ran on, one here
    # One fold of the same plan alone (a lost run's folder): the same fields, seed and scores as in the whole run.
    alone = tmp_path / "alone"
    one = CliRunner().invoke(main, [*run_args[:5], str(alone), *run_args[6:], "--only-folds", "1"])
    assert one.exit_code == 0, one.output
    only = json.loads(one.output.strip().splitlines()[-1])
    assert only["only_folds"] == [1] and [f["fold"] for f in only["folds"]] == [1]
    assert not (alone / "fold0").exists()
    assert only["folds"][0]["per_image_dice"] == summary["folds"][1]["per_image_dice"]
    assert only["folds"][0]["test_sources"] == summary["folds"][1]["test_sources"]
    for bad in ("2", "1,x", ""):
        refused = CliRunner().invoke(main, [*run_args[:5], str(tmp_path / f"bad{bad}"), *run_args[6:],
                                            "--only-folds", bad])
        assert refused.exit_code == 2 and "--only-folds" in refused.output
    # The saved models again, with other infer flags: the run's own flags give back the run's own scores.
    from reinfer_folds import compare

    again = compare(out, {"same": "--min-area 5 --exclude-border", "whole": "--mode whole --min-area 5"},
                    echo=lambda _: None)
    assert again["same"]["folds"] == [f["nucleus_dice"] for f in summary["folds"]]
    assert set(again["whole"]) >= {"nucleus_dice", "f1", "fnro", "n_extra", "n_missed", "seconds_per_field"}
    images = again["same"]["images"]  # every held-out field once, with the run's own per-field scores
    assert images and {name: row["nucleus_dice"] for name, row in images.items()} == {
        name: dice for fold in summary["folds"] for name, dice in fold["per_image_dice"].items()}


def test_fold_line_reads_as_a_sentence():
    fold = {"fold": 1, "test_sources": ["10002"], "test_images": 1, "nucleus_dice": 0.91567, "outline_dice": 0.94,
            "n_extra": 1, "n_missed": 0, "fnro": 0.0, "epochs": 57, "train_seconds": 843.2}
    assert fold_line(fold) == ("fold1 (test 10002; 1 image): nucleus Dice 0.9157 (outlines alone 0.9400: 1 extra, "
                               "0 missed), FNRo 0.0000, 57 epochs in 843 s")
    assert "; 2 images)" in fold_line({**fold, "test_images": 2})


def test_montage_captions_and_scales_every_image_in_rows():
    red = np.zeros((100, 200, 3), np.uint8)
    red[..., 2] = 255
    blue = np.zeros((50, 50, 3), np.uint8)
    blue[..., 0] = 255
    sheet = montage([("a", red), ("b", blue), ("c", red)], columns=2, size=100)
    # cells: red 22 + 50 px high, blue 22 + 100; rows padded to the tallest cell; 3 cells -> 2 rows of 2
    assert sheet.shape == (2 * (22 + 100), 200, 3)
    assert (sheet[22:72, :100] == red[0, 0]).all() and (sheet[22:122, 100:] == blue[0, 0]).all()
    assert (sheet[72:122, :100] == 255).all()                      # under the shorter image: white
    assert (sheet[:22, :100] < 128).any()                          # the caption is written
    assert (sheet[122:, 100:] == 255).all()                        # the empty fourth cell
    with pytest.raises(ValueError):
        montage([])


def write_tiles(folder: Path, sources: list[str], size: int = 128) -> Path:
    rng = np.random.default_rng(5)
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for source in sources:
        image, mask = random_pair(rng, size, size)
        cv2.imwrite(str(folder / "images" / f"{source}_0x0.png"), image)
        cv2.imwrite(str(folder / "masks" / f"{source}_0x0.png"), mask)
    return folder


def test_cli_scores_every_fold_and_ends_with_their_mean(tmp_path: Path):
    tiles = write_tiles(tmp_path / "tiles", ["20001", "20002", "20003", "20004", "20005", "20006"])
    config = tmp_path / "tiny.config"
    config.write_text(TINY)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--tiles", str(tiles), "--folds", "2", "--out", str(out), "--config",
                                       str(config), "--synth", "0", "--set", "train.epochs=1",
                                       "--infer-flags", "--min-area 5 --exclude-border"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    summary = json.loads(lines[-1])
    fold_lines = [line for line in lines if line.startswith("fold") and "nucleus Dice" in line]
    assert [line.split(" ")[0] for line in fold_lines] == ["fold0", "fold1"]  # among prep/train/infer's own lines
    assert len(summary["folds"]) == 2 and summary["test_images"] == 6
    held_out = [source for f in summary["folds"] for source in f["test_sources"]]
    assert sorted(held_out) == ["20001", "20002", "20003", "20004", "20005", "20006"]
    for f in summary["folds"]:  # each fold trained without its held-out sources and scored only on them
        trained = {name.split("_")[1] for name in f["train_sources"] + f["valid_sources"]}
        assert trained.isdisjoint(f["test_sources"])
        assert {name.split("_")[1] for name in f["per_image_dice"]} == set(f["test_sources"])
    for k, f in enumerate(summary["folds"]):  # the tiles' field edges reach infer: these are 0x0 tiles of 2×2 fields
        assert f["infer_flags"].endswith(f"--field-edges {out / 'folds' / f'fold{k}' / 'test' / 'field_edges.csv'}")
    assert summary["nucleus_dice"] == pytest.approx(np.mean([f["nucleus_dice"] for f in summary["folds"]]), abs=1e-4)
    assert (out / "fold0" / "infer" / "scores.csv").is_file() and (out / "fold1" / "infer" / "scores.csv").is_file()
    assert json.loads((out / "summary.json").read_text()) == summary
    sheet = cv2.imread(str(out / "overlays.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 320 and sheet.shape[0] == 2 * (22 + 320)  # 6 images, 4 a row


def test_cli_refuses_a_used_out_folder_and_too_many_folds(tmp_path: Path):
    tiles = write_tiles(tmp_path / "tiles", ["20001", "20002"])
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["--tiles", str(tiles), "--out", str(used)])
    assert result.exit_code != 0 and "--out" in result.output and (used / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(main, ["--tiles", str(tiles), "--out", str(used), "--resume"])
    assert result.exit_code != 0 and "run.json" in result.output and (used / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(main, ["--tiles", str(tiles), "--folds", "3", "--out", str(tmp_path / "new")])
    assert result.exit_code != 0 and "2 sources cannot make 3 folds" in result.output


def test_make_folds_writes_atomically_and_never_clobbers(tmp_path: Path):
    tiles = write_tiles(tmp_path / "tiles", ["20001", "20002", "20003"])
    out = tmp_path / "folds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_folds(tiles, out, 3)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    folds = make_folds(tiles, out, 3, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["fold0", "fold1", "fold2"] and len(folds) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folds", "tiles"]  # no temp folder left beside it
    (tiles / "masks" / "20002_0x0.png").unlink()
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="20002_0x0.png: no mask"):
        make_folds(tiles, fresh, 3)
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["folds", "tiles"]
    result = CliRunner().invoke(make_folds_main, ["--tiles", str(tiles), "--out", str(out), "--folds", "2",
                                                  "--overwrite"])
    assert result.exit_code != 0 and "no mask" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["fold0", "fold1", "fold2"]  # the old folds are untouched


def test_error_crops_show_each_extra_object_and_missed_nucleus_where_it_is():
    truth = np.zeros((200, 300), np.uint8)
    cv2.circle(truth, (50, 60), 10, 1, -1)   # found
    cv2.circle(truth, (250, 150), 10, 1, -1)  # missed
    prediction = np.zeros_like(truth)
    cv2.circle(prediction, (52, 60), 10, 1, -1)
    cv2.circle(prediction, (5, 190), 8, 1, -1)  # extra, near a corner: its crop is padded white
    overlay = np.full((200, 300, 3), 128, np.uint8)
    crops = error_crops(overlay, prediction > 0, truth > 0)
    assert [caption for caption, _ in crops] == ["extra 6,190", "missed 250,150"]  # the extra cut by the edge
    for _, crop in crops:
        assert crop.shape == (ERROR_CROP, ERROR_CROP, 3)
    corner = crops[0][1]
    # centred on (6, 190): rows are y 130…249, columns x −54…65; the field (grey) ends at y 199 and x 0
    assert (corner[:60, 60:] == 128).all()
    assert (corner[75:] == 255).all() and (corner[:, :50] == 255).all()  # beyond the field: white


def test_an_ignored_line_without_its_class_is_refused_before_the_folds_are_written(tmp_path: Path):
    fields = write_edf_folder(tmp_path / "fields", count=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--fields", str(fields), "--folds", "2", "--out", str(out),
                                       "--prep-flags", "--gt-rule auto-ignore-line"])
    assert result.exit_code == 1 and "(128,128,128):-1" in result.output, result.output
    assert not out.exists() or not any(out.iterdir())  # no folds, no run record to --resume


def test_the_peer_gets_our_budget_as_the_overrides_make_it():
    config = REPO / "configs" / "bench_cpu.config"
    shipped = peer_budget(config, [], 851.7)
    assert shipped == 840 and peer_budget(config, ["train.max_train_seconds=600"], 612.0) == 600
    steps = ["train.max_train_seconds=None", "train.epochs=100"]
    assert peer_budget(config, steps, 1234.5) == 1234.5  # a step budget: the seconds our fold trained
