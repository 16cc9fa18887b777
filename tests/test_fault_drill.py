"""The fault drill: each case makes its fault (a bomb PNG header, a truncated file, a killed run, an unwritable
folder, a diverging run) and checks the exit status, a message naming the culprit, no traceback, and that the
user's previous output and inputs are byte-identical afterwards."""

from __future__ import annotations

import csv
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from prep.atomic import atomic_output, clean_stale
from prep.cli import cli as prep_cli
from tests.conftest import random_pair, tree_digest, write_edf_folder
from tests.test_train_fit import invoke as train
from tests.test_train_fit import kill_after, make_run


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny, valid-looking PNG whose header declares ``width``×``height`` grey pixels (its data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def dead_pid() -> int:
    """The PID of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def immutable(folder: Path) -> bool:
    """Make ``folder`` unwritable even for root (chattr +i); False where the filesystem does not allow it."""
    return shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(folder)],
                                                                 capture_output=True).returncode == 0


def mutable(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def no_traceback(result) -> bool:
    return "Traceback" not in result.output and isinstance(result.exception, SystemExit | None)


# ---------------------------------------------------------------------------------------------- atomic outputs

def test_killed_runs_temp_folders_are_cleaned_and_a_stranded_previous_output_put_back(tmp_path: Path):
    out = tmp_path / "predictions"
    gone = dead_pid()
    (tmp_path / f".predictions.tmp-{gone}").mkdir()
    (tmp_path / f".predictions.tmp-{gone}" / "half.png").write_bytes(b"x")
    (tmp_path / f".predictions.old-{gone}").mkdir()  # killed between moving the old output aside and publishing
    (tmp_path / f".predictions.old-{gone}" / "mine.png").write_bytes(b"previous")
    (tmp_path / ".predictions.tmp-1").mkdir()  # PID 1 is alive: never touched
    with pytest.warns(UserWarning, match="put back the previous output"):
        cleaned = clean_stale(out)
    assert len(cleaned) == 2 and (out / "mine.png").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".predictions.tmp-1", "predictions"]
    (tmp_path / f".predictions.old-{gone}").mkdir()  # with the output there, a stale old copy is only removed
    clean_stale(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".predictions.tmp-1", "predictions"]


def test_a_failing_block_leaves_the_previous_output_as_it_was(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("mine")
    with pytest.raises(RuntimeError), atomic_output(out, overwrite=True) as temp:
        (temp / "new.txt").write_text("new")
        raise RuntimeError("failed half-way")
    assert tree_digest(tmp_path) == {"out/kept.txt": tree_digest(out)["kept.txt"]}
    with atomic_output(out, overwrite=True) as temp:
        (temp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and len(list(tmp_path.iterdir())) == 1


def test_overwriting_an_output_that_is_a_link_replaces_the_link_and_keeps_its_target(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "theirs.txt").write_text("kept")
    out = tmp_path / "out"
    out.symlink_to(target, target_is_directory=True)
    with atomic_output(out, overwrite=True) as temp:
        (temp / "new.txt").write_text("new")
    assert not out.is_symlink() and sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert (target / "theirs.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]  # no .out.old-PID link left behind
    gone = dead_pid()
    (tmp_path / f".out.old-{gone}").symlink_to(target, target_is_directory=True)  # a killed run's, with out there
    clean_stale(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"] and (target / "theirs.txt").exists()


# ---------------------------------------------------------------------------------------------- prep

def test_prep_refuses_a_bomb_header_before_decoding(tmp_path: Path):
    edf = write_edf_folder(tmp_path / "EDF", count=2, height=64, width=64)
    bomb_png(edf / "EDF001.png", 60000, 60000)
    bomb_png(edf / "EDF001_GT.png", 60000, 60000)  # sizes agree: only the pixel limit can stop it
    before = tree_digest(edf)
    result = CliRunner().invoke(prep_cli, ["run", "--input", str(edf), "--output", str(tmp_path / "data"),
                                           "--no-progress"])
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "EDF001.png: 60000×60000" in result.output and "--max-pixels" in result.output
    assert not (tmp_path / "data").exists() and tree_digest(edf) == before
    small = CliRunner().invoke(prep_cli, ["run", "--input", str(edf), "--output", str(tmp_path / "data"),
                                          "--exclude", "EDF001", "--max-pixels", "1000", "--no-progress"])
    assert small.exit_code == 1 and "EDF000.png: 64×64 = 4,096 pixels, over the limit of 1,000" in small.output


def test_prep_says_when_a_split_is_empty(tmp_path: Path):
    edf = write_edf_folder(tmp_path / "EDF", count=2, height=64, width=64)
    result = CliRunner().invoke(prep_cli, ["run", "--input", str(edf), "--output", str(tmp_path / "data"),
                                           "--tile-size", "64", "--no-augment", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "the test split is empty: 2 source(s) split 0.8,0.15,0.05 leave none for it" in result.output


def test_prep_synth_into_an_unwritable_folder_is_a_message(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if not immutable(locked):
        pytest.skip("chattr +i is not available here")
    try:
        result = CliRunner().invoke(prep_cli, ["synth", "--output", str(locked / "sample"), "--count", "1",
                                               "--size", "64", "--no-progress"])
    finally:
        mutable(locked)
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert f"{locked / 'sample'}: cannot write the output folder here" in result.output
    assert list(locked.iterdir()) == []


# ---------------------------------------------------------------------------------------------- infer

@pytest.fixture(scope="module")
def infer_project(tmp_path_factory) -> Path:
    from tests.test_infer_cli import make_project

    return make_project(tmp_path_factory.mktemp("drill-infer"))


def infer(*args):
    from infer.cli import cli

    return CliRunner().invoke(cli, ["--preset", "bare", *(str(a) for a in args)])


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_infer_skips_each_bad_file_and_says_why(infer_project: Path, tmp_path: Path):
    images, truths = tmp_path / "images", tmp_path / "truths"
    images.mkdir()
    truths.mkdir()
    rng = np.random.default_rng(4)
    for name in ("good", "badgt"):
        image, mask = random_pair(rng, 96, 96)
        cv2.imwrite(str(images / f"{name}.png"), image)
        cv2.imwrite(str(truths / f"{name}_GT.png"), mask)
    (truths / "badgt_GT.png").write_bytes((truths / "badgt_GT.png").read_bytes()[:60])  # truncated
    bomb_png(images / "bomb.png", 60000, 60000)
    (images / "broken.png").write_text("not a picture")
    before = tree_digest(tmp_path)
    out = tmp_path / "out"
    result = infer("--config", infer_project, "--input", images, "--gt", truths, "--output", out,
                   "--no-geojson", "--no-labels", "--no-progress")
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "3 image(s) could not be read" in result.output
    rows = {row["file"]: row for row in read_csv(out / "predictions.csv")}
    assert {name: row["status"] for name, row in rows.items()} == {
        "badgt.png": "failed", "bomb.png": "failed", "broken.png": "failed", "good.png": "ok"}
    assert "60000×60000" in rows["bomb.png"]["error"] and "--max-pixels" in rows["bomb.png"]["error"]
    assert "badgt_GT.png: truncated PNG" in rows["badgt.png"]["error"]
    assert "broken.png" in rows["broken.png"]["error"] and rows["good.png"]["error"] == ""
    assert (out / "good.png").is_file() and not (out / "bomb.png").exists()
    assert [row["file"] for row in read_csv(out / "scores.csv")] == ["good.png", "POOLED"]
    assert {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith("out/")} == before


def test_infer_with_no_readable_input_publishes_nothing_and_keeps_the_old_output(infer_project: Path,
                                                                                   tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.png").write_text("not a picture")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"a good earlier result")
    before = tree_digest(tmp_path)
    result = infer("--config", infer_project, "--input", images, "--output", out, "--overwrite", "--no-progress")
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "none of the 2 input(s) could be read" in result.output and f"nothing written to {out}" in result.output
    assert tree_digest(tmp_path) == before  # the earlier output as it was, no temp folder left


def test_infer_max_pixels_skips_large_images(infer_project: Path, tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "small.png"), random_pair(np.random.default_rng(5), 64, 64)[0])
    cv2.imwrite(str(images / "large.png"), random_pair(np.random.default_rng(6), 128, 128)[0])
    result = infer("--config", infer_project, "--input", images, "--output", tmp_path / "out", "--max-pixels", 5000,
                   "--no-geojson", "--no-labels", "--no-progress")
    assert result.exit_code == 1 and no_traceback(result)
    rows = {row["file"]: row["status"] for row in read_csv(tmp_path / "out" / "predictions.csv")}
    assert rows == {"large.png": "failed", "small.png": "ok"}


def test_infer_refuses_a_file_that_is_no_image_before_writing(infer_project: Path, tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    result = infer("--config", infer_project, "--input", notes, "--output", tmp_path / "out", "--no-progress")
    assert result.exit_code == 1 and no_traceback(result)
    assert "notes.txt: not an image file" in result.output and not (tmp_path / "out").exists()


def test_infer_cleans_a_killed_runs_temp_folder(infer_project: Path, tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), random_pair(np.random.default_rng(7), 64, 64)[0])
    stale = tmp_path / f".out.tmp-{dead_pid()}"
    stale.mkdir()
    (stale / "a.png").write_bytes(b"half")
    result = infer("--config", infer_project, "--input", images, "--output", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out"]


# ---------------------------------------------------------------------------------------------- train

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_dataset: Path) -> Path:
    """A finished one-epoch run (config, models/, eval/) to copy: the user's model a fault must not touch."""
    run = tmp_path_factory.mktemp("drill-train") / "run"
    run.mkdir()
    config = make_run(run, tiny_dataset, epochs=1)
    result = train("fit", "--config", config, "--set", "train.epoch_change_infer=False")
    assert result.exit_code == 0, result.output
    return run


def own_copy(trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    return run


def outputs_digest(run: Path) -> dict[str, str]:
    return {**{f"models/{k}": v for k, v in tree_digest(run / "models").items()},
            **{f"eval/{k}": v for k, v in tree_digest(run / "eval").items()}}


BAD_CONFIG = {
    "crop the net cannot pool": (["train.crop_size=(102,102)"],
                                 "[train] crop_size = (102, 102): must be divisible by 4"),
    "unknown model metric": (['model.metrics=["dice_coef_multiclass","bogus"]'], "[model] metrics"),
    "unknown train metric": (['train.metrics=["val_bogus"]'], "unknown: val_bogus"),
    "averaging with best-only": (["train.average_weights=0.3", "train.steps_per_epoch=2"],
                                 "set save_best_only = False"),
    "unknown activation": (["model.activation=bogus"], "[model] activation = bogus: expected one of relu"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_overwrite_with_a_bad_config_touches_nothing(case: str, trained_run: Path, tmp_path: Path):
    overrides, expected = BAD_CONFIG[case]
    run = own_copy(trained_run, tmp_path)
    before = outputs_digest(run)
    result = train("fit", "--config", run / "train_eval_infer.config", "--overwrite",
                   *[part for item in overrides for part in ("--set", item)])
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert expected in result.output, result.output
    assert outputs_digest(run) == before


def test_a_diverging_run_fails_and_the_previous_model_stays(trained_run: Path, tmp_path: Path):
    run = own_copy(trained_run, tmp_path)
    before = outputs_digest(run)
    result = train("fit", "--config", run / "train_eval_infer.config", "--overwrite", "--set",
                   "model.learning_rate=1e30", "--set", "model.clipvalue=None", "--set", "train.epochs=2")
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "training diverged at epoch 1" in result.output and "[model] learning_rate" in result.output
    assert "are back as they were" in result.output
    assert outputs_digest(run) == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_a_first_run_that_diverges_leaves_no_model(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset, epochs=1)
    result = train("fit", "--config", config, "--set", "model.learning_rate=1e30", "--set", "model.clipvalue=None")
    assert result.exit_code == 1 and "training diverged" in result.output
    assert not (tmp_path / "models" / "best.weights.h5").exists()
    assert not (tmp_path / "models" / "model.json").exists()


def test_an_interrupted_overwrite_puts_the_previous_model_back(trained_run: Path, tmp_path: Path):
    from train.config import load_config
    from train.fit import fit

    run = own_copy(trained_run, tmp_path)
    before = outputs_digest(run)

    class Failed(Exception):
        pass

    import keras

    class FailAtOnce(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise Failed

    with pytest.raises(Failed):
        fit(load_config(run / "train_eval_infer.config"), overwrite=True, verbose=0, extra_callbacks=[FailAtOnce()])
    assert outputs_digest(run) == before

    class CtrlCAtOnce(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="is back in .*models, as it was"):  # Ctrl-C too
        fit(load_config(run / "train_eval_infer.config"), overwrite=True, verbose=0, extra_callbacks=[CtrlCAtOnce()])
    assert outputs_digest(run) == before


def _interrupted(tmp_path: Path, dataset: Path) -> Path:
    from tests.test_train_fit import Killed
    from train.config import load_config
    from train.fit import fit

    config = make_run(tmp_path, dataset, epochs=3)
    with pytest.raises(Killed):
        fit(load_config(config), verbose=0, extra_callbacks=[kill_after(1)])
    assert (tmp_path / "models" / "backup" / "latest.weights.h5").is_file()
    return config


def test_a_damaged_backup_says_how_to_start_fresh(tmp_path: Path, tiny_dataset: Path):
    config = _interrupted(tmp_path, tiny_dataset)
    backup = tmp_path / "models" / "backup"
    weights = backup / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:500])  # killed while writing it
    (backup / "latest.weights.h5.bkp").unlink(missing_ok=True)
    before = tree_digest(backup)
    result = train("fit", "--config", config)
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "cannot be resumed" in result.output and "latest.weights.h5" in result.output
    assert "--fresh" in result.output and tree_digest(backup) == before
    fresh = train("fit", "--config", config, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert "resumed" not in fresh.output and (tmp_path / "models" / "best.weights.h5").is_file()


def test_a_changed_architecture_is_named_instead_of_resumed(tmp_path: Path, tiny_dataset: Path):
    config = _interrupted(tmp_path, tiny_dataset)
    result = train("fit", "--config", config, "--set", "model.base_filters=8")
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "[model] base_filters = 4 then, 8 now" in result.output and "--fresh" in result.output


def test_an_unwritable_model_dir_is_named_before_work(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset, epochs=1)
    (tmp_path / "blocker").write_text("a file")
    result = train("fit", "--config", config, "--set", "train.model_dir=./blocker/models")
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "[train] model_dir" in result.output and "blocker is a file" in result.output
    locked = tmp_path / "locked"
    locked.mkdir()
    if not immutable(locked):
        pytest.skip("chattr +i is not available here")
    try:
        result = train("fit", "--config", config, "--set", "train.model_dir=./locked/models")
    finally:
        mutable(locked)
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert f"[train] model_dir = {locked / 'models'}: cannot write in {locked}" in result.output
    assert list(locked.iterdir()) == [] and not (tmp_path / "eval").exists()


def test_changed_training_tiles_are_named_instead_of_resumed(tmp_path: Path, tiny_dataset: Path):
    own = tmp_path / "own-data"
    shutil.copytree(tiny_dataset, own)
    run = tmp_path / "run"
    run.mkdir()
    config = _interrupted(run, own)
    tile = sorted((own / "train" / "images").iterdir())[0]
    tile.unlink()
    (own / "train" / "masks" / tile.name).unlink()
    result = train("fit", "--config", config)
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "the training tiles changed since the interrupted run started" in result.output
    assert "--fresh" in result.output
