"""Ground truth as the ISBI 2014 EDF set publishes it: filled 8/16-bit/RGB masks, and closed nucleus outlines
(EDF000–EDF003) that must be filled; open contours are refused. Real-file tests skip without ../shared."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from prep.cli import cli
from prep.edf import InputError, discover, load_source
from prep.imageio import IGNORE_LEVEL, NUCLEUS_LEVEL
from prep.truth import FILLED, OUTLINE, TruthError, describe, interpret, read_truth
from tests.conftest import SHARED, tree_digest

ISBI = SHARED / "data" / "isbi2014"
EDF = ISBI / "EDF"
SYNTHETIC = ISBI / "synthetic"
OUTLINE_FIELDS = {"EDF000": 37, "EDF001": 33, "EDF002": 37, "EDF003": 29}  # nuclei, by the dataset's README


@pytest.fixture
def isbi() -> Path:
    if not (EDF / "EDF000_GT.png").is_file():
        pytest.skip("../shared/data/isbi2014 is not available")
    return ISBI


def polygons(seed: int = 3, count: int = 6, size: int = 160) -> list[np.ndarray]:
    """Non-overlapping nucleus-like polygons (ellipses of 12–28 px) on a size² field."""
    rng = np.random.default_rng(seed)
    shapes, taken = [], np.zeros((size, size), bool)
    while len(shapes) < count:
        centre = (int(rng.integers(20, size - 20)), int(rng.integers(20, size - 20)))
        axes = (int(rng.integers(6, 14)), int(rng.integers(6, 14)))
        points = cv2.ellipse2Poly(centre, axes, int(rng.integers(0, 180)), 0, 360, 10)
        region = np.zeros((size, size), np.uint8)
        cv2.fillPoly(region, [points], 255)
        grown = cv2.dilate(region, np.ones((5, 5), np.uint8)) > 0
        if not (grown & taken).any():
            shapes.append(points)
            taken |= grown
    return shapes


def drawn(shapes, size: int = 160, filled: bool = False, dtype=np.uint8) -> np.ndarray:
    """Outlines one grey level per nucleus (as EDF000–003), or filled masks of one level."""
    canvas = np.zeros((size, size), np.uint16)
    for index, points in enumerate(shapes):
        if filled:
            cv2.fillPoly(canvas, [points], 32896)
        else:
            cv2.polylines(canvas, [points], True, 31 + 10 * index, 1)
    return canvas.astype(dtype) if dtype != np.uint16 else canvas


def test_closed_outlines_are_filled_to_the_nuclei_they_draw():
    shapes = polygons()
    truth = interpret(drawn(shapes))
    assert truth.form == OUTLINE and truth.nuclei == len(shapes)
    np.testing.assert_array_equal(truth.mask, drawn(shapes, filled=True) > 0)
    # The same outlines as 16-bit or as RGB read the same.
    np.testing.assert_array_equal(interpret(drawn(shapes).astype(np.uint16) * 257).mask, truth.mask)
    np.testing.assert_array_equal(interpret(np.dstack([drawn(shapes)] * 3)).mask, truth.mask)


def test_filled_masks_are_read_exactly_and_never_changed():
    shapes = polygons(seed=5)
    deep = drawn(shapes, filled=True, dtype=np.uint16)  # 0/32896, as EDF004–EDF015
    for annotation in (deep, (deep > 0).astype(np.uint8) * 255, np.dstack([(deep > 0).astype(np.uint8) * 255] * 3)):
        truth = interpret(annotation)
        assert truth.form == FILLED and truth.nuclei == len(shapes)
        np.testing.assert_array_equal(truth.mask, deep > 0)
    ring = deep.copy()  # a filled nucleus with a small hole stays as annotated: the hole is not most of its area
    cv2.circle(ring, tuple(int(v) for v in shapes[0].mean(axis=0)), 2, 0, -1)
    np.testing.assert_array_equal(interpret(ring).mask, ring > 0)


def test_instance_labels_and_opaque_rgba_masks_are_read_as_stored(tmp_path: Path):
    shapes = polygons(seed=7)
    labels = np.zeros((160, 160), np.uint16)  # a 16-bit instance-label image (infer's labels/, Fiji, QuPath)
    for index, points in enumerate(shapes):
        cv2.fillPoly(labels, [points], [7, 200, 1, 65535, 129, 2][index])
    cv2.imwrite(str(tmp_path / "labels_GT.png"), labels)
    truth = read_truth(tmp_path / "labels_GT.png")
    assert truth.form == FILLED and truth.nuclei == len(shapes)  # ids 1, 2, 7 and 129 would round to 8-bit 0 or 1
    np.testing.assert_array_equal(truth.mask, labels > 0)
    rgba = np.dstack([(labels > 0).astype(np.uint8) * 255] * 3 + [np.full((160, 160), 255, np.uint8)])
    np.testing.assert_array_equal(interpret(rgba).mask, labels > 0)  # the opaque alpha is not nucleus


def test_nonzero_keeps_outlines_as_drawn_and_outline_fills_them():
    outlines = drawn(polygons())
    np.testing.assert_array_equal(interpret(outlines, "nonzero").mask, outlines > 0)
    np.testing.assert_array_equal(interpret(outlines, "outline").mask, interpret(outlines).mask)


def test_auto_interior_leaves_an_outlines_own_line_out_and_filled_masks_as_they_are():
    shapes = polygons()
    outlines = drawn(shapes)
    truth = interpret(outlines, "auto-interior")
    assert truth.form == OUTLINE and truth.nuclei == len(shapes)
    np.testing.assert_array_equal(truth.mask, (drawn(shapes, filled=True) > 0) & (outlines == 0))
    assert not (truth.mask & (outlines > 0)).any() and truth.mask.sum() < interpret(outlines).mask.sum()
    assert "filled without its line, 6 nuclei" in describe(truth, "EDF900_GT.png", "auto-interior")
    assert "filled, 6 nuclei" in describe(interpret(outlines), "EDF900_GT.png")
    deep = drawn(polygons(seed=5), filled=True, dtype=np.uint16)
    np.testing.assert_array_equal(interpret(deep, "auto-interior").mask, deep > 0)
    mixed = drawn(shapes[1:])
    cv2.polylines(mixed, [shapes[0][:20]], False, 200, 1)  # one open contour among closed ones
    with pytest.raises(TruthError, match="do not close"):
        interpret(mixed, "auto-interior", name="mixed")


def test_open_contours_are_refused_naming_the_file(tmp_path: Path):
    shapes = polygons()
    arcs = np.zeros((160, 160), np.uint8)
    for points in shapes:
        cv2.polylines(arcs, [points[: len(points) * 3 // 4]], False, 255, 1)  # three quarters of each outline
    path = tmp_path / "EDF900_GT.png"
    cv2.imwrite(str(path), arcs)
    with pytest.raises(TruthError, match="do not close") as err:
        read_truth(path)
    assert str(path) in str(err.value)
    # One open contour among closed ones: the fill would keep it a ring, so it is refused too, with its place.
    mixed = drawn(shapes[1:])
    cv2.polylines(mixed, [shapes[0][:20]], False, 200, 1)
    with pytest.raises(TruthError, match=r"1 contour\(s\) that do not close \(the first near x=\d+, y=\d+\)"):
        interpret(mixed, name="mixed")
    # Asked for explicitly, the closed ones are filled and the open one kept as drawn.
    forced = interpret(mixed, "outline").mask
    np.testing.assert_array_equal(forced, (drawn(shapes[1:], filled=True) > 0) | (mixed > 0))


def test_prep_refuses_open_contours_before_writing(tmp_path: Path):
    folder = tmp_path / "EDF"
    folder.mkdir()
    image = np.full((160, 160), 200, np.uint8)
    cv2.imwrite(str(folder / "EDF000.png"), image)
    arcs = np.zeros((160, 160), np.uint8)
    for points in polygons():
        cv2.polylines(arcs, [points[:20]], False, 255, 1)
    cv2.imwrite(str(folder / "EDF000_GT.png"), arcs)
    before = tree_digest(folder)
    result = CliRunner().invoke(cli, ["run", "--input", str(folder), "--output", str(tmp_path / "out"),
                                      "--tile-size", "64", "--no-augment", "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "EDF000_GT.png" in result.output and "do not close" in result.output
    assert not (tmp_path / "out").exists() and tree_digest(folder) == before


def test_auto_ignore_line_keeps_the_interior_and_marks_the_line_as_neither():
    shapes = polygons()
    outlines = drawn(shapes)
    truth = interpret(outlines, "auto-ignore-line")
    np.testing.assert_array_equal(truth.mask, interpret(outlines, "auto-interior").mask)
    np.testing.assert_array_equal(truth.ignore, outlines > 0)
    levels = truth.levels()
    assert levels.dtype == np.uint8 and set(np.unique(levels)) == {0, IGNORE_LEVEL, NUCLEUS_LEVEL}
    np.testing.assert_array_equal(levels == IGNORE_LEVEL, outlines > 0)
    np.testing.assert_array_equal(levels == NUCLEUS_LEVEL, truth.mask)
    assert "which counts as neither nucleus nor background" in describe(truth, "EDF900_GT.png", "auto-ignore-line")
    deep = drawn(polygons(seed=5), filled=True, dtype=np.uint16)  # a filled GT: nothing is ignored
    filled = interpret(deep, "auto-ignore-line")
    assert filled.ignore is None and set(np.unique(filled.levels())) == {0, NUCLEUS_LEVEL}
    assert interpret(outlines).ignore is None and interpret(outlines, "auto-interior").ignore is None


def test_prep_writes_an_outlines_line_as_the_ignore_level_through_every_augmentation(tmp_path: Path):
    fields = tmp_path / "EDF"
    fields.mkdir()
    shapes = polygons(size=96)
    outlines = drawn(shapes, size=96)
    image = np.full((96, 96, 3), 210, np.uint8)
    image[drawn(shapes, size=96, filled=True) > 0] = 60
    cv2.imwrite(str(fields / "EDF900.png"), image)
    cv2.imwrite(str(fields / "EDF900_GT.png"), outlines)
    out = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["run", "--input", str(fields), "--output", str(out), "--tile-size", "96",
                                      "--split", "1,0,0", "--gt-rule", "auto-ignore-line", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "which counts as neither nucleus nor background" in result.output
    masks = sorted((out / "train" / "masks").glob("*.png"))
    assert len(masks) > 5  # the tile and its augmented copies
    for path in masks:
        tile = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(tile)) == {0, IGNORE_LEVEL, NUCLEUS_LEVEL}, path.name  # nearest sampling keeps them
    original = cv2.imread(str(out / "train" / "masks" / "EDF900_0x0.png"), cv2.IMREAD_UNCHANGED)[:, :, 0]
    np.testing.assert_array_equal(original, interpret(outlines, "auto-ignore-line").levels())
    with (out / "manifest.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["file"] == "EDF900_0x0.png")
    assert float(row["nucleus_fraction"]) == pytest.approx((original == NUCLEUS_LEVEL).mean(), abs=1e-6)


def test_shared_outline_fields_fill_to_their_nuclei(isbi: Path):
    for name, nuclei in OUTLINE_FIELDS.items():
        truth = read_truth(EDF / f"{name}_GT.png")
        assert truth.form == OUTLINE, name
        assert truth.nuclei == nuclei, name
        assert 0.0095 <= truth.nucleus_fraction <= 0.0135, name  # 1.0–1.3 %; as rings they held 0.2–0.3 %
        assert read_truth(EDF / f"{name}_GT.png", "nonzero").nucleus_fraction < 0.003, name


def test_shared_outline_fields_read_by_their_interior_lose_their_line(isbi: Path):
    for name in OUTLINE_FIELDS:
        line = read_truth(EDF / f"{name}_GT.png", "nonzero").mask
        whole, interior = (read_truth(EDF / f"{name}_GT.png", rule).mask for rule in ("auto", "auto-interior"))
        np.testing.assert_array_equal(interior, whole & ~line)
        assert 0.7 <= interior.sum() / whole.sum() <= 0.85, name  # the line is a fifth of a filled outline


def test_shared_16bit_field_is_exact(isbi: Path):
    raw = cv2.imread(str(EDF / "EDF004_GT.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and set(np.unique(raw)) == {0, 32896}
    truth = read_truth(EDF / "EDF004_GT.png")
    assert truth.form == FILLED
    np.testing.assert_array_equal(truth.mask, raw > 0)


def test_prep_tiles_of_outline_fields_hold_the_filled_ground_truth(isbi: Path, tmp_path: Path):
    fields = tmp_path / "EDF"
    fields.mkdir()
    for name in ("EDF000", "EDF004"):
        for suffix in ("", "_GT"):
            (fields / f"{name}{suffix}.png").symlink_to(EDF / f"{name}{suffix}.png")
    out = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["run", "--input", str(fields), "--output", str(out), "--no-augment",
                                      "--keep-empty", "--split", "1,0,0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "EDF000_GT.png: outline ground truth" in result.output and "37 nuclei" in result.output
    assert "EDF004_GT.png" not in result.output  # a filled GT is read without a word
    for name in ("EDF000", "EDF004"):
        expected = read_truth(EDF / f"{name}_GT.png").mask
        for row in range(2):
            for col in range(2):
                tile = cv2.imread(str(out / "train" / "masks" / f"{name}_{row}x{col}.png"), cv2.IMREAD_UNCHANGED)
                assert set(np.unique(tile)) <= {0, 255}
                np.testing.assert_array_equal(tile[:, :, 0] > 0,
                                              expected[row * 512:(row + 1) * 512, col * 512:(col + 1) * 512])
    stats = CliRunner().invoke(cli, ["stats", "--dataset", str(out), "--plot", str(tmp_path / "stats.png")])
    assert stats.exit_code == 0, stats.output
    assert CliRunner().invoke(cli, ["stats"]).exit_code == 2  # no dataset named
    line = next(text for text in stats.output.splitlines() if text.strip().startswith("EDF000"))
    assert line.split()[3:6] == ["outline", "37", "1.10"]


# ------------------------------------------------------------------------- numbered images + a GT .mat

def _numbered_set(folder: Path, count: int, size: int = 48, deep: bool = False) -> list[np.ndarray]:
    """k.tif (k = 1 … count) and a matching nuclei .mat (a disc per image, at a place that tells them apart)."""
    folder.mkdir(parents=True)
    masks = np.empty((count, 1), dtype=object)
    for k in range(1, count + 1):
        mask = np.zeros((size, size), np.uint8)
        cv2.circle(mask, (6 + 3 * k, size // 2), 5, 1, -1)
        image = np.full((size, size), 200, np.uint8)
        image[mask > 0] = 40 + k
        cv2.imwrite(str(folder / f"{k}.tif"), image.astype(np.uint16) * 257 if deep else image)
        masks[k - 1, 0] = mask
    scipy.io.savemat(folder.parent / "set_GT.mat", {"train_Nuclei": masks, "CellNum": np.ones((count, 1))})
    return [masks[k, 0] for k in range(count)]


@pytest.mark.parametrize("deep", [False, True], ids=["8-bit", "16-bit"])
def test_numbered_tiffs_pair_with_their_cell(tmp_path: Path, deep: bool):
    masks = _numbered_set(tmp_path / "images", 11, deep=deep)
    refs = discover(tmp_path / "images", tmp_path / "set_GT.mat")
    assert [r.name for r in refs] == [f"set_{i:03d}" for i in range(11)]
    by_number = {int(r.image_path.stem): r for r in refs}
    for k in (1, 2, 10, 11):  # numeric order, not 1, 10, 11, 2
        image, mask = load_source(by_number[k])
        np.testing.assert_array_equal(mask, masks[k - 1] > 0)
        assert image.dtype == np.uint8 and int(image[mask].max()) == 40 + k  # 16-bit scaled back to 8 bits


def test_numbered_images_and_cells_must_agree_in_count(tmp_path: Path):
    _numbered_set(tmp_path / "images", 4)
    (tmp_path / "images" / "3.tif").unlink()
    with pytest.raises(InputError, match="3 numbered images, but .*set_GT.mat holds 4") as err:
        discover(tmp_path / "images", tmp_path / "set_GT.mat")
    assert str(tmp_path / "images") in str(err.value) and "missing 3" in str(err.value)


def test_an_image_whose_size_differs_from_its_cell_is_refused_naming_both(tmp_path: Path):
    _numbered_set(tmp_path / "images", 3)
    cv2.imwrite(str(tmp_path / "images" / "2.tif"), np.full((40, 44), 200, np.uint8))
    named_once = r"^[^:]*set_GT.mat: cell 2 of train_Nuclei is 48×48, its image \(.*2\.tif, entry 2\) is 44×40"
    with pytest.raises(InputError, match=named_once):
        discover(tmp_path / "images", tmp_path / "set_GT.mat")


def test_the_challenge_training_set_pairs_k_tif_with_cell_k(isbi: Path, tmp_path: Path):
    images, gt = SYNTHETIC / "isbi_train_images", SYNTHETIC / "isbi_train_GT.mat"
    nuclei = scipy.io.loadmat(gt)["train_Nuclei"]
    with pytest.warns(UserWarning, match="composed from the cells of its 16 real EDF fields"):
        refs = discover(images, gt)  # the real set is flagged as built from the real fields
    assert len(refs) == 45 == nuclei.shape[0]
    for ref in (refs[0], refs[4], refs[44]):
        image, mask = load_source(ref)
        k = int(ref.image_path.stem)
        assert k == ref.index + 1
        np.testing.assert_array_equal(mask, nuclei[k - 1, 0] > 0)
        np.testing.assert_array_equal(image[:, :, 0], cv2.imread(str(ref.image_path), cv2.IMREAD_UNCHANGED))
    # The nuclei are darker than the image around them: the pairing is right, not merely the same count.
    image, mask = load_source(refs[4])
    assert image[mask].mean() < image[~mask].mean() - 20
    short = tmp_path / "images"
    short.mkdir()
    for path in sorted(images.glob("*.tif"))[:44]:
        shutil.copyfile(path, short / path.name)
    result = CliRunner().invoke(cli, ["run", "--input", str(short), "--masks", str(gt),
                                      "--output", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert str(short) in result.output and str(gt) in result.output and "44 numbered images" in result.output
    assert not (tmp_path / "out").exists()
