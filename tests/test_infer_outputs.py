"""Instance outputs: a 16-bit label image and QuPath GeoJSON that agree with the mask and nuclei.csv, id for id and
pixel for pixel; GeoJSON read back as QuPath reads it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from infer.cli import cli as infer_cli
from infer.measure import label_nuclei, measure_nuclei, separate_touching
from infer.outputs import LABEL_MAX, label_image, nuclei_geojson, outline_rings
from tests.conftest import random_pair
from tests.test_infer_cli import make_project


def shoelace(ring) -> float:
    ring = np.asarray(ring, float)
    return 0.5 * float(np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], -1)))


def blobs(seed: int = 0, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(8):
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))  # some cut by the edge
        cv2.ellipse(mask, centre, (int(rng.integers(4, 15)), int(rng.integers(4, 15))), int(rng.integers(0, 180)),
                    0, 360, 1, -1)
    return mask > 0


def test_label_image_is_16_bit_and_32_bit_past_65535_nuclei():
    labels = label_nuclei(blobs())
    image, suffix = label_image(labels)
    assert image.dtype == np.uint16 and suffix == ".png"
    np.testing.assert_array_equal(image, labels)
    many, suffix = label_image(np.array([[LABEL_MAX + 1, 0]], np.int32))
    assert many.dtype == np.int32 and suffix == ".tif" and many[0, 0] == LABEL_MAX + 1


def test_outlines_run_along_pixel_edges_and_enclose_the_nucleus_area():
    for seed in range(5):
        labels = label_nuclei(blobs(seed))
        for label_id in range(1, labels.max() + 1):
            rows, cols = np.nonzero(labels == label_id)
            box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
            rings = outline_rings(labels[box] == label_id, (rows.min(), cols.min()))
            outer = rings[0]
            assert np.array_equal(outer[0], outer[-1])
            # the outline's corners cut an eighth of a pixel each: within 2 % of the pixel count (or 2 px)
            area = shoelace(outer) + sum(shoelace(hole) for hole in rings[1:])  # holes' areas are negative
            assert abs(area - rows.size) <= max(2.0, 0.02 * rows.size), (seed, label_id, area, rows.size)
            assert outer[:, 0].min() >= cols.min() - 1e-9 and outer[:, 0].max() <= cols.max() + 1 + 1e-9
            assert outer[:, 1].min() >= rows.min() - 1e-9 and outer[:, 1].max() <= rows.max() + 1 + 1e-9


def test_a_nucleus_with_a_hole_gets_an_inner_ring():
    ring = np.zeros((30, 30), bool)
    cv2.circle(ring.view(np.uint8), (15, 15), 10, 1, -1)
    cv2.circle(ring.view(np.uint8), (15, 15), 4, 0, -1)
    rings = outline_rings(ring)
    assert len(rings) == 2 and shoelace(rings[1]) < 0 < shoelace(rings[0])  # RFC 7946: outer positive, hole not
    assert abs(shoelace(rings[0]) + shoelace(rings[1]) - ring.sum()) <= 2


def test_geojson_features_carry_the_ids_and_measurements_of_the_table():
    mask = blobs(3)
    labels = label_nuclei(mask)
    image = np.full((*mask.shape, 3), 200, np.uint8)
    nuclei = measure_nuclei(labels, image, np.full(mask.shape, 200, np.uint8))
    collection = json.loads(json.dumps(nuclei_geojson(labels, nuclei)))  # valid JSON: no NaN
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(nuclei)
    for feature, nucleus in zip(collection["features"], nuclei, strict=True):
        assert feature["type"] == "Feature" and feature["id"] == nucleus["id"]
        assert feature["geometry"]["type"] == "Polygon"
        properties = feature["properties"]
        assert properties["objectType"] == "detection" and properties["classification"]["name"] == "Nucleus"
        assert properties["measurements"]["area_px"] == nucleus["area_px"]
        assert properties["measurements"]["centroid_x"] == pytest.approx(nucleus["centroid_x"], abs=1e-5)


def test_separated_touching_nuclei_keep_apart_in_the_mask():
    two = np.zeros((40, 60), np.uint8)
    cv2.circle(two, (20, 20), 11, 1, -1)
    cv2.circle(two, (37, 20), 11, 1, -1)
    labels = separate_touching(label_nuclei(two > 0, split_touching=True))
    assert labels.max() == 2
    count, _ = cv2.connectedComponents((labels > 0).astype(np.uint8), connectivity=8)
    assert count - 1 == 2  # the mask itself now holds two nuclei
    assert ((labels > 0) <= (two > 0)).all() and (two > 0).sum() - (labels > 0).sum() < 30  # one thin line


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    config = make_project(root)
    images = root / "images"
    images.mkdir()
    image, _ = random_pair(np.random.default_rng(7), 300, 420, nuclei=10)
    cv2.imwrite(str(images / "EDF300x420.png"), image)
    # A low threshold widens the briefly trained model's blobs, and --fill-holes (as the recommended flags) closes
    # the 1-pixel holes that marching squares draws at half size.
    result = CliRunner().invoke(infer_cli, ["--preset", "bare", "--config", str(config), "--output", str(root / "out"),
                                            "--threshold", "0.3", "--min-area", "10", "--fill-holes",
                                            "--split-touching", "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "out"


def test_labels_geojson_and_table_agree_id_for_id_and_pixel_for_pixel(predicted: Path):
    mask = cv2.imread(str(predicted / "EDF300x420.png"), cv2.IMREAD_UNCHANGED) > 0
    labels = cv2.imread(str(predicted / "labels" / "EDF300x420.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and labels.shape == mask.shape
    np.testing.assert_array_equal(labels > 0, mask)  # label pixels = mask pixels
    table = [row for row in read_csv(predicted / "nuclei.csv") if row["image"] == "EDF300x420.png"]
    assert table, "the check below compares something"
    ids = sorted(int(row["id"]) for row in table)
    assert ids == sorted(int(v) for v in np.unique(labels) if v)
    for row in table:
        assert int(row["area_px"]) == int((labels == int(row["id"])).sum())
    # Read back as QuPath would: a FeatureCollection of Polygons, rings closed and inside the image.
    collection = json.loads((predicted / "geojson" / "EDF300x420.geojson").read_text())
    height, width = mask.shape
    by_id = {int(row["id"]): row for row in table}
    assert sorted(feature["id"] for feature in collection["features"]) == ids
    for feature in collection["features"]:
        rings = feature["geometry"]["coordinates"]
        for ring in rings:
            assert ring[0] == ring[-1] and len(ring) >= 4
            xs, ys = [point[0] for point in ring], [point[1] for point in ring]
            assert min(xs) >= 0 and max(xs) <= width and min(ys) >= 0 and max(ys) <= height
        area = shoelace(rings[0]) + sum(shoelace(hole) for hole in rings[1:])
        pixels = int(by_id[feature["id"]]["area_px"])
        assert abs(area - pixels) <= max(2.0, 0.03 * pixels)
        measured = feature["properties"]["measurements"]
        assert measured["area_px"] == pixels
        assert measured["mean_probability"] == pytest.approx(float(by_id[feature["id"]]["mean_probability"]), abs=1e-5)


def test_each_instance_output_can_be_turned_off(predicted: Path, tmp_path: Path):
    config = predicted.parent / "train_eval_infer.config"
    result = CliRunner().invoke(infer_cli, ["--preset", "bare", "--config", str(config), "--output",
                                            str(tmp_path / "bare"), "--no-labels", "--no-geojson", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "bare" / "labels").exists() and not (tmp_path / "bare" / "geojson").exists()
    assert (tmp_path / "bare" / "EDF300x420.png").is_file()
