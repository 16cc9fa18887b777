"""`infer` end to end with a small, briefly trained, seeded FlexUNet: sizes, outputs, scoring, bad input."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from infer.cli import cli as infer_cli
from prep.cli import cli as prep_cli
from tests.conftest import REPO, random_pair

CONFIG = """
[model]
image_width = 64
image_height = 64
image_channels = 3
num_classes = 2
base_filters = 4
base_kernels = (3,3)
num_layers = {layers}
[train]
model_dir = "./models/"
[infer]
images_dir = "./images/"
output_dir = "./out/"
"""

SIZES = [(1024, 1024), (512, 1536), (901, 700), (300, 300)]


def make_project(root: Path, layers: int = 3, weights_layers: int | None = None, fit_steps: int = 80) -> Path:
    """A config and the weights of a seeded FlexUNet (``weights_layers`` deep) in its model_dir, fitted for
    ``fit_steps`` steps on 64² crops of dark discs. An untrained model's noise is ~10⁵ one-pixel "nuclei" per field,
    whose measuring took most of this module's time; 80 steps find the discs (pooled Dice > 0.9, asserted below)
    in a few seconds."""
    import keras

    from train.config import load_config
    from train.model import build_model

    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "train_eval_infer.config"
    config_path.write_text(CONFIG.format(layers=weights_layers or layers))
    keras.utils.set_random_seed(0)
    model = build_model(load_config(config_path))
    if fit_steps:
        rng = np.random.default_rng(5)
        pairs = [random_pair(rng, 64, 64, nuclei=2) for _ in range(64)]
        images = np.stack([image for image, _ in pairs]).astype(np.float32) / 255.0  # as infer feeds the model
        masks = np.stack([(mask[..., 0] > 0).astype(np.int32) for _, mask in pairs])
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        batch = 16
        model.fit(images, masks, batch_size=batch, epochs=max(1, fit_steps * batch // len(pairs)), verbose=0)
    (root / "models").mkdir()
    model.save_weights(str(root / "models" / "best.weights.h5"))
    config_path.write_text(CONFIG.format(layers=layers))
    return config_path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("infer")
    config = make_project(root)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for height, width in SIZES:
        image, mask = random_pair(rng, height, width, nuclei=8)
        # One disc cut by each edge, so the border rules have something to drop or keep on every side.
        for centre in ((width // 3, 0), (width // 2, height - 1), (0, height // 3), (width - 1, height // 2)):
            cv2.circle(mask, centre, 10, (255, 255, 255), -1)
        image[mask > 0] = 60
        cv2.imwrite(str(images / f"EDF{height}x{width}.png"), image)
        cv2.imwrite(str(images / f"EDF{height}x{width}_GT.png"), mask)
    return config


def invoke(*args):
    """infer with the reference's bare settings unless a test names its --preset: these tests check the mechanics
    (sizes, tiles, thresholds, each flag alone) on a barely trained model, which the recommended clean-up would blur."""
    preset = [] if "--preset" in args else ["--preset", "bare"]
    return CliRunner().invoke(infer_cli, [*preset, *(str(a) for a in args)])


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_outputs_match_input_sizes_and_ground_truth_is_scored(project: Path, tmp_path: Path):
    out = tmp_path / "out"
    # No GeoJSON or labels here: test_infer_outputs checks them.
    result = invoke("--config", project, "--output", out, "--gt", project.parent / "images", "--save-prob",
                    "--no-geojson", "--no-labels", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["file"] for r in rows) == sorted(f"EDF{h}x{w}.png" for h, w in SIZES)  # *_GT not predicted
    for height, width in SIZES:
        name = f"EDF{height}x{width}"
        mask = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape[:2] == (height, width)
        assert set(np.unique(mask)) <= {0, 255}
        overlay = cv2.imread(str(out / "overlays" / f"{name}.png"))
        assert overlay.shape == (height, width, 3)
        probability = np.load(out / "probabilities" / f"{name}.npy")
        assert probability.shape == (height, width) and probability.dtype == np.float32
        assert probability.min() >= 0 and probability.max() <= 1
        np.testing.assert_array_equal(mask > 0, probability > 0.5)
    row = next(r for r in rows if r["file"] == "EDF901x700.png")
    assert (int(row["height"]), int(row["width"])) == (901, 700) and int(row["tiles"]) > 1
    scores = read_csv(out / "scores.csv")
    assert [r["file"] for r in scores][-1] == "POOLED" and len(scores) == len(SIZES) + 1
    assert all(0 <= float(r["nucleus_dice"]) <= 1 for r in scores)
    assert float(scores[-1]["nucleus_dice"]) > 0.9  # the fitted model finds the discs (make_project's claim)
    assert "nucleus Dice" in result.output
    header = (out / "nuclei.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["image", "id", "centroid_y"] and "solidity" in header
    # Each nucleus's confidence is the mean saved probability under it (kept to k/255), above the threshold.
    from infer.measure import label_nuclei

    nuclei = read_csv(out / "nuclei.csv")
    assert nuclei  # the checks below compare something
    for height, width in SIZES:
        name = f"EDF{height}x{width}"
        labels = label_nuclei(cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 0)
        probability = np.load(out / "probabilities" / f"{name}.npy")
        for nucleus in (n for n in nuclei if n["image"] == f"{name}.png"):
            inside = probability[labels == int(nucleus["id"])]
            assert float(nucleus["mean_probability"]) == pytest.approx(inside.mean(), abs=1 / 255)
            assert float(nucleus["mean_probability"]) > 0.5


def test_exclude_border_drops_exactly_the_nuclei_cut_by_the_edge(project: Path, tmp_path: Path):
    from infer.measure import clean_mask

    common = ["--config", project, "--input", project.parent / "images", "--min-area", "5", "--no-geojson",
              "--no-progress"]
    assert invoke(*common, "--output", tmp_path / "plain").exit_code == 0
    result = invoke(*common, "--output", tmp_path / "inside", "--exclude-border")
    assert result.exit_code == 0, result.output
    touched = 0
    for height, width in SIZES:
        plain = cv2.imread(str(tmp_path / "plain" / f"EDF{height}x{width}.png"), cv2.IMREAD_GRAYSCALE) > 0
        inside = cv2.imread(str(tmp_path / "inside" / f"EDF{height}x{width}.png"), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(inside, clean_mask(plain, exclude_border=True))
        touched += int((inside != plain).any())
    assert touched  # the check above compared something: some prediction did touch an edge

    # Tiles of a larger field: only the listed edges are the field's; unlisted images stay whole fields.
    listed = {"EDF1024x1024.png": ("top", "left"), "EDF512x1536.png": ()}
    table = tmp_path / "field_edges.csv"
    table.write_text("file,field_edges\n" + "".join(f"{name},{' '.join(edges)}\n" for name, edges in listed.items())
                     + "EDF999.png,top\n")  # a name typed wrong: said, not fatal
    result = invoke(*common, "--output", tmp_path / "tiles", "--exclude-border", "--field-edges", table)
    assert result.exit_code == 0, result.output
    assert "1 listed file(s) not among the inputs (first: EDF999.png)" in result.output
    kept_more = 0
    for height, width in SIZES:
        name = f"EDF{height}x{width}.png"
        plain = cv2.imread(str(tmp_path / "plain" / name), cv2.IMREAD_GRAYSCALE) > 0
        tiled = cv2.imread(str(tmp_path / "tiles" / name), cv2.IMREAD_GRAYSCALE) > 0
        edges = listed.get(name, ("top", "bottom", "left", "right"))
        np.testing.assert_array_equal(tiled, clean_mask(plain, exclude_border=True, field_edges=edges))
        kept_more += int(tiled.sum() > (cv2.imread(str(tmp_path / "inside" / name), cv2.IMREAD_GRAYSCALE) > 0).sum())
    assert kept_more  # some nucleus on an inner edge was kept this time


def test_min_confidence_drops_exactly_the_nuclei_whose_mean_probability_is_below_it(project: Path, tmp_path: Path):
    from infer.measure import drop_unconfident, label_nuclei

    common = ["--config", project, "--input", project.parent / "images", "--threshold", "0.45", "--no-geojson",
              "--no-progress"]
    assert invoke(*common, "--output", tmp_path / "all", "--save-prob").exit_code == 0
    means = [float(row["mean_probability"]) for row in read_csv(tmp_path / "all" / "nuclei.csv")]
    bar = float(np.median(means))  # half the nuclei on each side
    result = invoke(*common, "--output", tmp_path / "sure", "--min-confidence", bar)
    assert result.exit_code == 0, result.output
    dropped = 0
    for height, width in SIZES:
        name = f"EDF{height}x{width}"
        everything = cv2.imread(str(tmp_path / "all" / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 0
        probability = np.load(tmp_path / "all" / "probabilities" / f"{name}.npy")
        confidence = np.rint(np.clip(probability, 0, 1) * 255).astype(np.uint8)  # as infer measures it
        expected = drop_unconfident(label_nuclei(everything), confidence, bar) > 0
        sure = cv2.imread(str(tmp_path / "sure" / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(sure, expected)
        dropped += int(everything.sum() > sure.sum())
    assert dropped  # the bar did drop nuclei
    kept = read_csv(tmp_path / "sure" / "nuclei.csv")
    assert kept and all(float(row["mean_probability"]) >= bar - 1e-6 for row in kept)
    assert len(kept) < len(means)
    record = json.loads((tmp_path / "sure" / "infer.json").read_text())
    assert record["options"]["min_confidence"] == pytest.approx(bar)
    # A bar above every nucleus' mean drops them all: said per image, with the way to check (an unsure model).
    above = min(max(means) + 0.01, 1.0)
    none_kept = invoke(*common, "--output", tmp_path / "none", "--min-confidence", above)
    assert none_kept.exit_code == 0, none_kept.output
    assert "the model is unsure of most of what it finds" in none_kept.output
    assert f"--min-confidence {above:g} dropped" in none_kept.output
    assert "check with --min-confidence 0" in none_kept.output


def test_field_edges_table_errors_name_the_file_line_and_flag(project: Path, tmp_path: Path):
    common = ["--config", project, "--input", project.parent / "images", "--no-geojson", "--no-progress"]
    table = tmp_path / "edges.csv"
    table.write_text("file,field_edges\nEDF300x300.png,top\n")
    result = invoke(*common, "--output", tmp_path / "o1", "--field-edges", table)
    assert result.exit_code != 0 and "--field-edges only says where --exclude-border applies" in result.output
    for text, message in [("file,edges\nEDF300x300.png,top\n", "missing field_edges"),
                          ("file,field_edges\nEDF300x300.png,top\nEDF901x700.png,up left\n",
                           "line 3 (EDF901x700.png): unknown edge 'up'"),
                          ("file,field_edges\nEDF300x300.png,top\nEDF300x300.png,left\n", "repeated file name")]:
        table.write_text(text)
        result = invoke(*common, "--output", tmp_path / "o2", "--exclude-border", "--field-edges", table)
        assert result.exit_code != 0 and str(table) in result.output and message in result.output, result.output
        assert not (tmp_path / "o2").exists()
    result = invoke(*common, "--output", tmp_path / "o3", "--exclude-border", "--field-edges", tmp_path / "none.csv")
    assert result.exit_code != 0 and "none.csv: cannot read --field-edges" in result.output


def test_config_defaults_tiles_mode_and_overwrite(project: Path, tmp_path: Path):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rng = np.random.default_rng(2)
    for index in range(3):
        cv2.imwrite(str(tiles / f"tile_{index}.png"), random_pair(rng, 64, 64)[0])
    out = tmp_path / "tiles_out"
    result = invoke("--config", project, "--input", tiles, "--output", out, "--mode", "tiles", "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["tiles"] for r in read_csv(out / "predictions.csv")] == ["1", "1", "1"]
    again = invoke("--config", project, "--input", tiles, "--output", out, "--no-progress")
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert invoke("--config", project, "--input", tiles, "--output", out, "--overwrite", "--tta",
                  "--no-progress").exit_code == 0


def test_unreadable_image_is_skipped_and_reported(project: Path, tmp_path: Path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), random_pair(np.random.default_rng(3), 100, 120)[0])
    (folder / "broken.png").write_text("not a picture")
    out = tmp_path / "out"
    result = invoke("--config", project, "--input", folder, "--output", out, "--no-geojson", "--no-progress")
    assert result.exit_code != 0
    assert "broken.png" in result.output and "Traceback" not in result.output
    assert (out / "good.png").is_file() and not (out / "broken.png").exists()


def test_an_image_is_never_its_own_ground_truth_nor_a_gt_file_an_input(project: Path, tmp_path: Path,
                                                                        monkeypatch):
    from infer.run import InferError, find_truth, list_inputs

    fields = tmp_path / "EDF"
    fields.mkdir()
    cv2.imwrite(str(fields / "a.png"), np.full((8, 8), 200, np.uint8))
    cv2.imwrite(str(fields / "a_GT.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(fields / "b.png"), np.full((8, 8), 200, np.uint8))  # no b_GT.png
    monkeypatch.chdir(tmp_path)
    assert find_truth(Path("EDF"), fields / "a.png") == Path("EDF") / "a_GT.png"
    assert find_truth(Path("EDF"), fields / "b.png") is None  # b.png itself, spelled another way, is not its GT
    assert find_truth(Path("EDF"), tmp_path / "elsewhere" / "b.png") == Path("EDF") / "b.png"  # a GT named as it
    with pytest.raises(InferError, match="a_GT.png: a ground-truth file"):
        list_inputs(fields / "a_GT.png")


def test_bad_inputs_are_named(project: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("--config", project, "--input", empty, "--output", tmp_path / "o1")
    assert result.exit_code != 0 and "no images to predict" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("--config", project, "--input", project.parent / "images", "--output", blocker / "out")
    assert result.exit_code != 0 and "cannot write" in result.output
    mismatched = make_project(tmp_path / "deeper", layers=3, weights_layers=4, fit_steps=0)
    result = invoke("--config", mismatched, "--input", project.parent / "images", "--output", tmp_path / "o2")
    assert result.exit_code != 0 and "do not fit" in result.output
    assert isinstance(result.exception, SystemExit)


def test_outline_ground_truth_is_filled_and_open_contours_skip_only_their_image(project: Path, tmp_path: Path):
    images = project.parent / "images"
    filled = cv2.imread(str(images / "EDF300x300_GT.png"), cv2.IMREAD_GRAYSCALE)
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = np.zeros_like(filled)
    cv2.drawContours(outline, contours, -1, 255, 1)
    arcs = np.zeros_like(filled)
    for contour in contours:
        cv2.polylines(arcs, [contour[: len(contour) // 2]], False, 255, 1)
    inputs, outlines = tmp_path / "in", tmp_path / "outline-gt"
    inputs.mkdir()
    outlines.mkdir()
    for name in ("EDF300x300", "EDF512x1536"):
        (inputs / f"{name}.png").symlink_to(images / f"{name}.png")
    cv2.imwrite(str(outlines / "EDF300x300_GT.png"), outline)
    (outlines / "EDF512x1536_GT.png").symlink_to(images / "EDF512x1536_GT.png")  # a filled GT beside it
    scored = {}
    for label, gt in (("filled", images), ("outline", outlines)):
        result = invoke("--config", project, "--input", inputs, "--output", tmp_path / label, "--gt", gt,
                        "--no-geojson", "--no-progress")
        assert result.exit_code == 0, result.output
        scored[label] = next(r for r in read_csv(tmp_path / label / "scores.csv") if r["file"] == "EDF300x300.png")
    assert "outline-gt/EDF300x300_GT.png: outline ground truth" in result.output
    assert scored["outline"] == scored["filled"]  # the outlines, filled, are the same nuclei
    # --gt-rule auto-interior: the outlines score as the filled masks less their line would.
    interior = tmp_path / "interior-gt"
    interior.mkdir()
    cv2.imwrite(str(interior / "EDF300x300_GT.png"), np.where(outline > 0, 0, filled).astype(np.uint8))
    (interior / "EDF512x1536_GT.png").symlink_to(images / "EDF512x1536_GT.png")
    for label, gt, rule in (("inner", interior, "auto"), ("outline-interior", outlines, "auto-interior")):
        result = invoke("--config", project, "--input", inputs, "--output", tmp_path / label, "--gt", gt,
                        "--gt-rule", rule, "--no-geojson", "--no-progress")
        assert result.exit_code == 0, result.output
        scored[label] = next(r for r in read_csv(tmp_path / label / "scores.csv") if r["file"] == "EDF300x300.png")
    assert scored["outline-interior"] == scored["inner"] != scored["filled"]
    # auto-ignore-line: the interior is nucleus and the line's pixels count for neither side.
    result = invoke("--config", project, "--input", inputs, "--output", tmp_path / "ignore-line", "--gt", outlines,
                    "--gt-rule", "auto-ignore-line", "--no-geojson", "--no-progress")
    assert result.exit_code == 0, result.output
    ignoring = next(r for r in read_csv(tmp_path / "ignore-line" / "scores.csv") if r["file"] == "EDF300x300.png")
    assert (ignoring["tp"], ignoring["fn"]) == (scored["inner"]["tp"], scored["inner"]["fn"])
    assert int(ignoring["fp"]) < int(scored["inner"]["fp"])  # the model draws the line, which no longer counts
    # --dataset scores a prep run's sources by the rule prep read them with, unless told otherwise.
    fields = tmp_path / "fields"
    fields.mkdir()
    for name in ("EDF300x300", "EDF512x1536"):
        (fields / f"{name}.png").symlink_to(images / f"{name}.png")
        (fields / f"{name}_GT.png").symlink_to(outlines / f"{name}_GT.png")
    cv2.imwrite(str(outlines / "EDF300x300_GT.png"), outline)
    dataset = tmp_path / "dataset"
    prepped = CliRunner().invoke(prep_cli, ["run", "--input", str(fields), "--output", str(dataset), "--no-augment",
                                            "--split", "0,0,1", "--gt-rule", "auto-interior", "--no-progress"])
    assert prepped.exit_code == 0, prepped.output
    for label, extra in (("dataset-recorded", []), ("dataset-auto", ["--gt-rule", "auto"])):
        result = invoke("--config", project, "--dataset", dataset, "--split", "test", "--output", tmp_path / label,
                        *extra, "--no-geojson", "--no-progress")
        assert result.exit_code == 0, result.output
        scored[label] = next(r for r in read_csv(tmp_path / label / "scores.csv") if r["file"] == "EDF300x300.png")
    assert scored["dataset-recorded"] == scored["inner"] and scored["dataset-auto"] == scored["filled"]
    cv2.imwrite(str(outlines / "EDF300x300_GT.png"), arcs)
    result = invoke("--config", project, "--input", inputs, "--output", tmp_path / "open", "--gt", outlines,
                    "--no-geojson", "--no-progress")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "EDF300x300_GT.png" in result.output and "do not close" in result.output
    rows = read_csv(tmp_path / "open" / "predictions.csv")
    assert {r["file"]: r["status"] for r in rows} == {"EDF300x300.png": "failed", "EDF512x1536.png": "ok"}
    assert "do not close" in next(r["error"] for r in rows if r["status"] == "failed")


def test_a_dataset_prepped_from_relative_paths_is_predicted_from_any_folder(project: Path, tmp_path: Path,
                                                                           monkeypatch):
    work = tmp_path / "work"
    (work / "fields").mkdir(parents=True)
    for name in ("EDF300x300", "EDF901x700"):
        for suffix in ("", "_GT"):
            shutil.copy(project.parent / "images" / f"{name}{suffix}.png", work / "fields" / f"{name}{suffix}.png")
    monkeypatch.chdir(work)
    prepped = CliRunner().invoke(prep_cli, ["run", "--input", "fields", "--output", "dataset", "--no-augment",
                                            "--split", "0,0,1", "--no-progress"])
    assert prepped.exit_code == 0, prepped.output
    monkeypatch.chdir(tmp_path)
    result = invoke("--config", project, "--dataset", work / "dataset", "--split", "test", "--output", "scored",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert {r["file"] for r in read_csv(tmp_path / "scored" / "scores.csv")} >= {"EDF300x300.png", "EDF901x700.png"}
    (work / "fields" / "EDF901x700_GT.png").rename(work / "moved_GT.png")
    moved = invoke("--config", project, "--dataset", work / "dataset", "--split", "test", "--output", "again",
                   "--no-progress")
    assert moved.exit_code == 1 and "Traceback" not in moved.output
    assert "prep.json: 1 source file(s) of split 'test' not found" in moved.output
    assert str(work / "fields" / "EDF901x700_GT.png") in moved.output and not (tmp_path / "again").exists()


def test_an_output_is_never_the_input_nor_a_file(project: Path, tmp_path: Path):
    from tests.conftest import tree_digest

    images = tmp_path / "scans"
    images.mkdir()
    (images / "EDF300x300.png").symlink_to(project.parent / "images" / "EDF300x300.png")
    (tmp_path / "notes.txt").write_text("mine")
    cases = {"is": images, "lies inside": images / "out", "contains": tmp_path}
    before = tree_digest(tmp_path)
    for relation, output in cases.items():
        result = invoke("--config", project, "--input", images, "--output", output, "--overwrite", "--no-progress")
        assert result.exit_code == 1 and "Traceback" not in result.output, relation
        assert f"{relation} the input folder {images.resolve()}" in result.output, (relation, result.output)
    result = invoke("--config", project, "--input", images, "--output", tmp_path / "notes.txt", "--overwrite",
                    "--no-progress")
    assert result.exit_code == 1 and "notes.txt is an existing file" in result.output
    gt = invoke("--config", project, "--input", images, "--gt", project.parent / "images",
                "--output", project.parent / "images" / "predictions", "--no-progress")
    assert gt.exit_code == 1 and "the input folder" in gt.output  # the ground truth's folder counts too
    assert tree_digest(tmp_path) == before and not (images / "out").exists()


def test_overwrite_never_deletes_the_model_or_its_config(project: Path, tmp_path: Path):
    from tests.conftest import tree_digest

    images = tmp_path / "scans"
    images.mkdir()
    (images / "EDF300x300.png").symlink_to(project.parent / "images" / "EDF300x300.png")
    before = tree_digest(project.parent)
    models = project.parent / "models"
    cases = [(["--config", project], models, "is the model folder"),
             (["--config", project], project.parent, "contains the model folder")]  # --model: its model_dir
    for source, output, says in cases:
        result = invoke(*source, "--input", images, "--output", output, "--overwrite", "--no-progress")
        assert result.exit_code == 1 and "Traceback" not in result.output, (output, result.output)
        assert f"--output {output} {says} {models.resolve()}" in result.output, result.output
    config_only = tmp_path / "cfg"
    config_only.mkdir()
    (config_only / project.name).write_text(project.read_text().replace('"./models/"', f'"{models}"'))
    result = invoke("--config", config_only / project.name, "--input", images, "--output", config_only,
                    "--overwrite", "--no-progress")
    assert result.exit_code == 1 and "contains the config file" in result.output, result.output
    assert tree_digest(project.parent) == before and (config_only / project.name).exists()
    inside = invoke("--config", project, "--input", images, "--output", models / "predictions", "--no-progress")
    assert inside.exit_code == 0, inside.output  # beside the weights is untidy, not destructive: allowed


@pytest.mark.parametrize("flag", ["--overlap", "--threshold", "--min-confidence"])
def test_nan_options_are_refused(project: Path, tmp_path: Path, flag: str):
    result = invoke("--config", project, flag, "nan", "--output", tmp_path / "out", "--no-progress")
    assert result.exit_code == 2 and flag in result.output and "finite" in result.output
    assert not (tmp_path / "out").exists()


def test_two_inputs_with_one_name_are_refused_before_work(project: Path, tmp_path: Path):
    images = tmp_path / "scans"
    images.mkdir()
    source = cv2.imread(str(project.parent / "images" / "EDF300x300.png"))
    cv2.imwrite(str(images / "a.png"), source)
    cv2.imwrite(str(images / "a.jpg"), source)
    result = invoke("--config", project, "--input", images, "--output", tmp_path / "out", "--no-progress")
    assert result.exit_code == 1 and "a.jpg" in result.output and "a.png" in result.output
    assert "two inputs with one name" in result.output and not (tmp_path / "out").exists()


def test_whole_mode_predicts_each_image_in_one_pass(project: Path, tmp_path: Path):
    out = tmp_path / "whole"
    result = invoke("--config", project, "--output", out, "--mode", "whole", "--tta", "--tta-mode", "8",
                    "--no-geojson", "--no-progress")
    assert result.exit_code == 0, result.output
    for row in read_csv(out / "predictions.csv"):
        assert row["tiles"] == "1", row
        mask = cv2.imread(str(out / row["file"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape[:2] == (int(row["height"]), int(row["width"]))
    assert json.loads((out / "infer.json").read_text())["options"]["mode"] == "whole"


def test_bfloat16_and_xla_predict_what_float32_does(project: Path, tmp_path: Path):
    """The faster computes give the same probabilities up to rounding, say so in infer.json, and leave Keras'
    global policy as it was (train and evaluate in the same process must not inherit it)."""
    import keras

    probabilities = {}
    for name, flags in {"float32": [], "bfloat16": ["--precision", "bfloat16"], "xla": ["--xla"]}.items():
        out = tmp_path / name
        result = invoke("--config", project, "--input", project.parent / "images" / "EDF300x300.png", "--output",
                        out, "--mode", "whole", "--no-geojson", "--no-labels", "--no-progress", "--save-prob", *flags)
        assert result.exit_code == 0, result.output
        options = json.loads((out / "infer.json").read_text())["options"]
        assert (options["precision"], options["xla"]) == ("bfloat16" if name == "bfloat16" else "float32",
                                                          name == "xla")
        probabilities[name] = np.concatenate([np.load(path).ravel()
                                              for path in sorted((out / "probabilities").glob("*.npy"))])
        assert keras.mixed_precision.global_policy().name == "float32"
        compute = json.loads((out / "infer.json").read_text())["compute"]
        assert compute == ("mixed_bfloat16" if name == "bfloat16" else "float32")
    assert np.abs(probabilities["xla"] - probabilities["float32"]).max() < 1e-3
    difference = np.abs(probabilities["bfloat16"] - probabilities["float32"])
    assert 0 < difference.max() < 0.05  # bfloat16 keeps 8 bits of mantissa: close, never identical


def test_defaults_are_the_documented_recommended_preset(project: Path, tmp_path: Path):
    from infer.cli import PRESETS, preset_text

    result = invoke("--config", project, "--preset", "recommended", "--output", tmp_path / "out", "--no-geojson",
                    "--no-labels", "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "infer.json").read_text())
    options = record["options"]
    assert record["preset"] == "recommended"
    assert shlex.split(record["command"])[:5] == ["infer", "--config", str(project), "--preset", "recommended"]
    recommended = PRESETS["recommended"]
    assert (options["mode"], options["tta"], options["min_area"], options["fill_holes"], options["exclude_border"],
            options["min_confidence"]) == (
        recommended["mode"], int(recommended["tta_mode"]) if recommended["tta"] else 0, recommended["min_area"],
        recommended["fill_holes"], recommended["exclude_border"], recommended["min_confidence"])
    documented = (REPO / "README.md").read_text(encoding="utf-8")
    assert preset_text("recommended") in documented  # the README names the flags the defaults stand for
    given = invoke("--config", project, "--min-area", "0", "--no-tta", "--output", tmp_path / "own", "--no-geojson",
                   "--no-labels", "--no-progress", "--preset", "recommended")
    assert given.exit_code == 0, given.output
    own = json.loads((tmp_path / "own" / "infer.json").read_text())["options"]
    assert (own["min_area"], own["tta"], own["mode"]) == (0, 0, recommended["mode"])  # a flag beats its preset
    assert own["min_confidence"] == recommended["min_confidence"] > 0


def test_shards_cover_every_input_once_and_merge_into_the_single_run(project: Path, tmp_path: Path):
    from infer.cli import shard_of
    from infer.merge import main as merge_main
    from tests.conftest import tree_digest

    names = [f"f{k}" for k in range(7)]
    assert sorted(n for k in range(1, 4) for n in shard_of(names, k, 3)) == sorted(names)
    assert shard_of(names, 2, 3) == ["f1", "f4"]
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(9)
    for k in range(5):
        image, mask = random_pair(rng, 96, 96)
        cv2.imwrite(str(images / f"s{k}.png"), image)
        cv2.imwrite(str(images / f"s{k}_GT.png"), mask)
    common = ["--config", project, "--input", images, "--gt", images, "--no-progress"]
    assert invoke(*common, "--output", tmp_path / "single").exit_code == 0
    for k in (1, 2, 3):
        result = invoke(*common, "--shard", f"{k}/3", "--output", tmp_path / f"shard{k}")
        assert result.exit_code == 0, result.output
    partial = CliRunner().invoke(merge_main, [str(tmp_path / "shard1"), "--output", str(tmp_path / "bad")])
    assert partial.exit_code == 1 and "missing [2, 3]" in partial.output
    merged = CliRunner().invoke(merge_main, [str(tmp_path / f"shard{k}") for k in (1, 2, 3)]
                                + ["--output", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    single, together = tree_digest(tmp_path / "single"), tree_digest(tmp_path / "merged")
    per_image = {k: v for k, v in single.items() if not k.endswith((".csv", ".json"))}
    assert per_image and {k: together[k] for k in per_image} == per_image  # masks, labels, overlays, GeoJSON
    # The tables in the single run's order (s0 s1 s2 s3 s4, not the shards' s0 s3 s1 s4 s2), row for row.
    assert read_csv(tmp_path / "merged" / "nuclei.csv") == read_csv(tmp_path / "single" / "nuclei.csv")
    assert [r["file"] for r in read_csv(tmp_path / "merged" / "predictions.csv")] == [f"s{k}.png" for k in range(5)]
    scores = [read_csv(tmp_path / name / "scores.csv") for name in ("single", "merged")]
    assert scores[1][:-1] == scores[0][:-1]
    pooled = [rows[-1] for rows in scores]
    assert pooled[0]["nucleus_dice"] == pooled[1]["nucleus_dice"] and pooled[0]["object_f1"] == pooled[1]["object_f1"]
    other = invoke(*common, "--shard", "2/3", "--threshold", "0.6", "--output", tmp_path / "other2")
    assert other.exit_code == 0, other.output
    mixed = CliRunner().invoke(merge_main, [str(tmp_path / k) for k in ("shard1", "other2", "shard3")]
                               + ["--output", str(tmp_path / "mixed")])
    assert mixed.exit_code == 1 and "other2: its options differ" in mixed.output and not (tmp_path / "mixed").exists()
    bad = invoke(*common, "--shard", "4/3", "--output", tmp_path / "x")
    assert bad.exit_code == 2 and "1 ≤ K ≤ N" in bad.output
