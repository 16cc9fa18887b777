"""`prep run` end to end: the contract, determinism, every bad input, the accepted odd inputs."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from prep.cli import cli
from tests.conftest import REPO, mat_cells, random_pair, tree_digest, write_edf_folder

FAST = ["--tile-size", "256", "--no-progress"]


def run_prep(*args: str | Path):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def read_manifest(out: Path) -> list[dict]:
    with (out / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_writes_the_contract(edf_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = run_prep("--input", edf_folder, "--output", out, "--split", "0.34,0.33,0.33", *FAST)
    assert result.exit_code == 0, result.output
    rows = read_manifest(out)
    assert set(rows[0]) >= {"split", "file", "source", "row", "col", "y", "x", "augmentation", "params"}
    record = json.loads((out / "prep.json").read_text())
    assert {s: len(v) for s, v in record["splits"].items()} == {"train": 1, "valid": 1, "test": 1}
    split_of = {name: split for split, names in record["splits"].items() for name in names}
    for row in rows:
        assert split_of[row["source"]] == row["split"]  # tiles follow their source's split
        image = cv2.imread(str(out / row["split"] / "images" / row["file"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / row["split"] / "masks" / row["file"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == mask.shape == (256, 256, 3)
        assert set(np.unique(mask)) <= {0, 255} and mask.any()  # --skip-empty is the default
    augmented = {row["split"] for row in rows if row["augmentation"] != "none"}
    assert augmented == {"train"}  # valid and test are never augmented by default
    files = {p.name for p in (out / "train" / "images").iterdir()}
    assert {row["file"] for row in rows if row["split"] == "train"} == files
    kinds = {row["augmentation"] for row in rows}
    assert kinds == {"none", "hflip", "vflip", "rotate", "elastic", "distort", "barrel", "pincushion"}
    assert record["inputs"][0]["image_sha256"] and record["counts"]["train"]["tiles"] == len(files)
    assert "source(s)" in result.output and leftovers(tmp_path) == []
    # The command that ran, even in-process (a bench's sys.argv is its own): runnable as written.
    assert shlex.split(record["run"]["command"]) == ["prep", "run", "--input", str(edf_folder), "--output", str(out),
                                              "--split", "0.34,0.33,0.33", *FAST]


def test_manifest_positions_locate_the_tiles(edf_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert run_prep("--input", edf_folder, "--output", out, "--no-augment", "--keep-empty", *FAST).exit_code == 0
    for row in read_manifest(out):
        source = cv2.imread(str(edf_folder / f"{row['source']}.png"))
        tile = cv2.imread(str(out / row["split"] / "images" / row["file"]))
        y, x = int(row["y"]), int(row["x"])
        visible = source[y : y + 256, x : x + 256]
        np.testing.assert_array_equal(tile[: visible.shape[0], : visible.shape[1]], visible)
        assert row["file"] == f"{row['source']}_{row['row']}x{row['col']}.png"


def test_same_inputs_and_seed_give_identical_bytes_whatever_the_workers(edf_folder: Path, tmp_path: Path):
    digests, records = [], []
    for name, workers in (("a", "1"), ("b", "2"), ("c", "2")):
        out = tmp_path / name
        result = run_prep("--input", edf_folder, "--output", out, "--workers", workers, *FAST)
        assert result.exit_code == 0, result.output
        digests.append(tree_digest(out, skip=("prep.json",)))
        record = json.loads((out / "prep.json").read_text())
        record.pop("run")
        records.append(record)
    assert digests[0] == digests[1] == digests[2]
    assert records[0] == records[1] == records[2]
    other = tmp_path / "seed"
    assert run_prep("--input", edf_folder, "--output", other, "--seed", "7", *FAST).exit_code == 0
    assert tree_digest(other, skip=("prep.json",)) != digests[0]


def test_missing_parent_folders_are_created(edf_folder: Path, tmp_path: Path):
    out = tmp_path / "new" / "deeper" / "out"
    result = run_prep("--input", edf_folder, "--output", out, "--no-augment", *FAST)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.csv").is_file()


def test_existing_output_needs_overwrite(edf_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_prep("--input", edf_folder, "--output", out, *FAST)
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    result = run_prep("--input", edf_folder, "--output", out, "--overwrite", "--no-augment", *FAST)
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "manifest.csv").is_file()
    assert leftovers(tmp_path) == []


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


def _drop(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    return folder


def _resize_gt(folder: Path) -> Path:
    cv2.imwrite(str(folder / "EDF001_GT.png"), np.zeros((100, 100, 3), np.uint8))
    return folder


def _truncate(folder: Path) -> Path:
    path = folder / "EDF002.png"
    path.write_bytes(path.read_bytes()[: 2000])
    return folder


def _corrupt_middle(folder: Path) -> Path:
    path = folder / "EDF002.png"
    data = bytearray(path.read_bytes())
    data[200:3000] = bytes(2800)  # header and end chunk intact: found only when decoding
    path.write_bytes(bytes(data))
    return folder


def _text_png(folder: Path) -> Path:
    (folder / "EDF001.png").write_text("this is not a picture\n")
    return folder


BAD_INPUTS = {
    "empty folder": (lambda f: _empty(f.parent / "nothing"), [], "no EDF images"),
    "image without GT": (lambda f: _drop(f, "EDF001_GT.png"), [], "EDF001.png: image without ground truth"),
    "GT without image": (lambda f: _drop(f, "EDF001.png"), [], "EDF001_GT.png: ground truth without image"),
    "size mismatch": (_resize_gt, [], "EDF001_GT.png: size 100×100 differs"),
    "truncated png": (_truncate, [], "EDF002.png: truncated PNG"),
    "corrupt png data": (_corrupt_middle, [], "EDF002.png"),
    "text named png": (_text_png, [], "EDF001.png: not a PNG"),
    "split sum": (lambda f: f, ["--split", "0.5,0.3,0.1"], "--split"),
    "split negative": (lambda f: f, ["--split", "1.2,-0.1,-0.1"], "--split"),
    "split nan": (lambda f: f, ["--split", "nan,0.5,0.5"], "--split"),
    "tile size zero": (lambda f: f, ["--tile-size", "0"], "--tile-size"),
    "tile size negative": (lambda f: f, ["--tile-size", "-5"], "--tile-size"),
    "barrel radius zero": (lambda f: f, ["--barrel-radius", "0"], "--barrel-radius"),
    "barrel radius negative": (lambda f: f, ["--barrel-radius", "-0.3"], "--barrel-radius"),
    "barrel radius nan": (lambda f: f, ["--barrel-radius", "nan"], "--barrel-radius"),
    "elastic alpha nan": (lambda f: f, ["--elastic-alpha", "nan"], "--elastic-alpha"),
    "elastic sigma nan": (lambda f: f, ["--elastic-sigmas", "8,nan"], "--elastic-sigmas"),
    "distortion size inf": (lambda f: f, ["--distortion-sizes", "inf"], "--distortion-sizes"),
    "distortion sigma nan": (lambda f: f, ["--distortion-sigma", "NaN"], "--distortion-sigma"),
    "barrel amount nan": (lambda f: f, ["--barrel-amounts", "nan"], "--barrel-amounts"),
    "barrel centre nan": (lambda f: f, ["--barrel-centers", "0.3,nan"], "--barrel-centers"),
    "pincushion nan": (lambda f: f, ["--pincushion-amounts", "nan"], "--pincushion-amounts"),
    "fade factor one": (lambda f: f, ["--fade-factors", "0.5,1"], "--fade-factors"),
    "fade factor nan": (lambda f: f, ["--fade-factors", "nan"], "--fade-factors"),
    "test augmented": (lambda f: f, ["--augment-splits", "train,test"], "--augment-splits"),
    "unknown exclude": (lambda f: f, ["--exclude", "EDF042"], "--exclude EDF042"),
    "seed negative": (lambda f: f, ["--seed", "-1"], "--seed"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named_and_loses_nothing(case: str, edf_folder: Path, tmp_path: Path):
    make, flags, expected = BAD_INPUTS[case]
    folder = make(edf_folder)
    fresh = tmp_path / "fresh"
    result = run_prep("--input", folder, "--output", fresh, *FAST, *flags)
    assert result.exit_code != 0
    assert expected in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert not fresh.exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = run_prep("--input", folder, "--output", existing, "--overwrite", *FAST, *flags)
    assert result.exit_code != 0 and expected in result.output
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == []


def test_odd_but_valid_inputs_are_accepted(tmp_path: Path):
    folder = tmp_path / "EDF"
    folder.mkdir()
    rng = np.random.default_rng(4)
    image, mask = random_pair(rng, 300, 200)
    cv2.imwrite(str(folder / "EDF000.png"), image[:, :, 0])  # grey-level
    cv2.imwrite(str(folder / "EDF001.png"), image.astype(np.uint16) * 257)  # 16-bit
    cv2.imwrite(str(folder / "EDF002.png"), np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]))
    for i in range(3):
        cv2.imwrite(str(folder / f"EDF00{i}_GT.png"), mask)
    (folder / "notes.txt").write_text("scanner notes")
    (folder / "Thumbs.db").write_bytes(b"\0\1")
    out = tmp_path / "out"
    result = run_prep("--input", folder, "--output", out, "--no-augment", "--tile-size", "512", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "warning: ignoring" in result.output and "notes.txt" in result.output and "Thumbs.db" in result.output
    tiles = [out / r["split"] / "images" / r["file"] for r in read_manifest(out)]
    assert len(tiles) == 3  # one padded 512² tile per image smaller than a tile
    first = cv2.imread(str(tiles[0]))
    assert first.shape == (512, 512, 3)
    pixels = [cv2.imread(str(t))[:300, :200] for t in tiles]
    for other in pixels[1:]:
        np.testing.assert_array_equal(other, pixels[0])  # grey, 16-bit and RGBA give the same pixels


def test_mat_input_through_the_cli(tmp_path: Path):
    import scipy.io

    rng = np.random.default_rng(2)
    pairs = [random_pair(rng, 128, 128) for _ in range(4)]
    images = mat_cells([image[:, :, 0] / 255.0 for image, _ in pairs])
    nuclei = mat_cells([mask[:, :, 0] > 0 for _, mask in pairs])
    scipy.io.savemat(tmp_path / "isbi_train.mat", {"ISBI_Train": images})
    scipy.io.savemat(tmp_path / "isbi_train_GT.mat", {"train_Nuclei": nuclei})
    out = tmp_path / "out"
    result = run_prep("--input", tmp_path / "isbi_train.mat", "--masks", tmp_path / "isbi_train_GT.mat",
                      "--output", out, "--tile-size", "128", "--split", "0.5,0.25,0.25", "--no-progress")
    assert result.exit_code == 0, result.output
    assert {r["source"] for r in read_manifest(out)} == {f"isbi_train_00{i}" for i in range(4)}


def test_stats_table_and_chart(edf_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert run_prep("--input", edf_folder, "--output", out, "--split", "0.34,0.33,0.33", *FAST).exit_code == 0
    result = CliRunner().invoke(cli, ["stats", str(out), "--plot", str(tmp_path / "chart.png")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["split", "tiles", "sources", "nucleus"]
    train = next(line for line in lines if line.strip().startswith("train")).split()
    assert int(train[1]) == sum(1 for r in read_manifest(out) if r["split"] == "train")
    chart = cv2.imread(str(tmp_path / "chart.png"))
    assert chart is not None and chart.shape[1] > 500
    missing = CliRunner().invoke(cli, ["stats", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "manifest" in missing.output


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_module_entry_point_does_not_import_tensorflow():
    code = "import sys, prep.cli, prep.dataset, prep.synth, prep.stats; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert result.stdout.strip() == "False"
    helped = subprocess.run([sys.executable, "-m", "prep", "run", "--help"], capture_output=True, text=True,
                            env=_env())
    assert helped.returncode == 0 and "--barrel-centers" in helped.stdout


@pytest.mark.slow
def test_ctrl_c_mid_run_leaves_nothing(tmp_path: Path):
    folder = write_edf_folder(tmp_path / "EDF", count=6, height=1024, width=1024)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "prep", "run", "--input", str(folder), "--output", str(out), "--workers", "2",
         "--keep-empty", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
        if temps and any(temps[0].glob("train/images/*.png")):
            break
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("prep never started writing tiles")
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_output_is_never_the_input_folder(edf_folder: Path, where: str):
    output = {"same": edf_folder, "inside": edf_folder / "tiles", "around": edf_folder.parent}[where]
    before = tree_digest(edf_folder.parent)
    result = CliRunner().invoke(cli, ["run", "--input", str(edf_folder), "--output", str(output), "--overwrite",
                                      "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"the input folder {edf_folder.resolve()}" in result.output
    assert tree_digest(edf_folder.parent) == before
