"""Predict full-size images with a trained FlexUNet: stream-stitched tiles → mask, overlay, probabilities,
per-nucleus measurements, and scores against ground truth. I/O lives here; the cores are ``infer.stitch``
(tiling and blending) and ``infer.measure`` (nuclei)."""

from __future__ import annotations

import csv
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prep.atomic import OutputError, atomic_output, output_relation
from prep.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageReadError, luma, read_image, write_png
from prep.truth import OUTLINE, Truth, TruthError, describe, read_truth
from train.config import Config

GT_SUFFIX = "_GT"
# status: ok, or failed with its reason in error (the other columns then empty).
PREDICTION_COLUMNS = ("file", "status", "height", "width", "tiles", "nuclei", "nucleus_area_fraction", "seconds",
                      "error")


class InferError(ValueError):
    """A problem the user can fix; the message names the file, folder or flag."""


@dataclass(frozen=True)
class InferOptions:
    overlap: float = 0.25
    tta: int = 0  # 0, 2 (mirror), 4 (flips) or 8 (dihedral)
    batch_size: int = 4
    save_prob: bool = False
    mode: str = "full"  # full: stitched tiles | whole: one pass when ≤ whole_max_pixels | tiles: see infer --mode
    whole_max_pixels: int = 4096 * 4096  # larger images are stitched, which bounds memory by the tile
    multiple: int = 1  # with whole: the network's pooling multiple (downsample × 2^(num_layers − 1))
    threshold: float = 0.5
    min_area: int = 0
    fill_holes: bool = False
    exclude_border: bool = False
    # Images that are tiles of a larger field: which of their edges are the field's (others: all four).
    field_edges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    split_touching: bool = False
    min_confidence: float = 0.0  # drop nuclei whose mean probability is below this (0: keep all)
    weighting: str = "gaussian"
    labels: bool = True  # labels/<stem>.png, 16-bit instance ids
    geojson: bool = True  # geojson/<stem>.geojson, one polygon per nucleus (QuPath)
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # larger images (by their header) are skipped, not decoded
    gt_rule: str = "auto"  # how --gt's images become nucleus masks (prep.truth.GT_RULES)
    precision: str = "float32"  # the network's compute: float32 | bfloat16 (train.model.PRECISIONS)
    xla: bool = False  # compile the prediction with XLA


@dataclass
class InferResult:
    rows: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    pooled: dict | None = None


def list_inputs(source: Path) -> list[Path]:
    """Images to predict: one file, or a folder's images without the ISBI ground-truth files (*_GT.*)."""
    if source.is_file():
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise InferError(f"--input {source}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        if source.stem.endswith(GT_SUFFIX):
            raise InferError(f"--input {source}: a ground-truth file (*{GT_SUFFIX}), not an image to predict")
        return [source]
    if not source.is_dir():
        raise InferError(f"{source}: --input does not exist")
    images = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(GT_SUFFIX))
    if not images:
        raise InferError(f"{source}: no images to predict (looked for {', '.join(IMAGE_SUFFIXES)}, *_GT ignored)")
    by_stem: dict[str, Path] = {}
    for image in images:  # outputs are named by stem: a.png and a.jpg would write one mask
        if image.stem in by_stem:
            raise InferError(f"{by_stem[image.stem]} and {image}: two inputs with one name; their outputs would "
                             "overwrite each other (rename or move one)")
        by_stem[image.stem] = image
    return images


def check_output(output: Path, folders: Sequence[Path], kept: Sequence[tuple[str, Path]] = ()) -> None:
    """An output folder is never an input: not an existing file, not one of ``folders`` (the inputs' and the
    ground truth's), not inside one, not holding one; and never what ``kept`` names (what, path: the model folder,
    the config file), nor a folder holding it, which --overwrite would delete. Checked before anything is written
    or replaced."""
    if output.exists() and not output.is_dir():
        raise InferError(f"--output {output} is an existing file, not a folder")
    for folder in sorted({Path(f).expanduser().resolve() for f in folders}):
        relation = output_relation(output, folder)
        if relation:
            raise InferError(f"--output {output} {relation} the input folder {folder}: predictions never go "
                             "where the images (or their ground truth) are; give another --output")
    for what, path in kept:
        relation = output_relation(output, path)
        if relation in ("is", "contains"):  # a folder inside the model's is untidy, not destructive
            raise InferError(f"--output {output} {relation} {what} {path.expanduser().resolve()}: replacing the "
                             "output folder would delete it; give another --output")


def read_field_edges(path: Path) -> dict[str, tuple[str, ...]]:
    """``--field-edges`` CSV: columns ``file`` (an input's file name) and ``field_edges`` (the space-separated
    edges of that image that are edges of its field: top bottom left right; empty for an inner tile)."""
    from infer.measure import check_edges

    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"file", "field_edges"} - set(reader.fieldnames or ())
            if missing:
                raise InferError(f"{path}: --field-edges needs the columns file,field_edges "
                                 f"(missing {', '.join(sorted(missing))})")
            edges: dict[str, tuple[str, ...]] = {}
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                name = (row["file"] or "").strip()
                if not name or name in edges:
                    raise InferError(f"{where}: {'empty' if not name else 'repeated'} file name {name!r}")
                try:
                    edges[name] = check_edges((row["field_edges"] or "").split())
                except ValueError as err:
                    raise InferError(f"{where} ({name}): {err}") from None
    except OSError as err:
        raise InferError(f"{path}: cannot read --field-edges ({err.strerror or err})") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise InferError(f"{path}: --field-edges is not a CSV file ({err})") from None
    return edges


def find_truth(gt_dir: Path, image: Path) -> Path | None:
    """``<stem>_GT.png`` in ``gt_dir``, else ``<stem>.png`` there unless that is the image itself (however the two
    paths are spelled: the ISBI layout keeps images and ground truth in one folder)."""
    for name in (f"{image.stem}{GT_SUFFIX}.png", f"{image.stem}.png"):
        candidate = gt_dir / name
        if candidate.is_file() and not (image.exists() and os.path.samefile(candidate, image)):
            return candidate
    return None


def _dataset_record(dataset: Path) -> dict:
    import json

    record_path = dataset / "prep.json"
    try:
        return json.loads(record_path.read_text())
    except (OSError, ValueError) as err:
        raise InferError(f"{record_path}: cannot read the dataset record ({err})") from None


def dataset_sources(dataset: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, ground truth) of the full-size sources that `prep run` put in ``split`` (from prep.json), so
    a model can be scored on whole images it never saw in training."""
    record = _dataset_record(dataset)
    pairs = [(Path(entry["image"]), Path(entry["mask"])) for entry in record.get("inputs", [])
             if entry.get("split") == split and entry.get("index") is None]
    if not pairs:
        raise InferError(f"{dataset / 'prep.json'}: no PNG source images in split {split!r}")
    missing = [path for pair in pairs for path in pair if not path.is_file()]
    if missing:  # before the model loads: a dataset whose sources moved is named, not half-predicted
        raise InferError(f"{dataset / 'prep.json'}: {len(missing)} source file(s) of split {split!r} not found "
                         f"(first: {missing[0]}); records made before prep wrote absolute paths name them from the "
                         "folder prep ran in: run infer from there, or prep the sources again")
    return pairs


def dataset_gt_rule(dataset: Path) -> str:
    """The --gt-rule `prep run` read the dataset's ground truth with (prep.json; "auto" in records before it was
    kept), so its sources are scored as they were tiled."""
    from prep.truth import GT_RULES

    rule = _dataset_record(dataset).get("parameters", {}).get("gt_rule", "auto")
    if rule not in GT_RULES:
        raise InferError(f"{dataset / 'prep.json'}: gt_rule {rule!r} is not one of {', '.join(GT_RULES)}")
    return rule


def model_input(rgb: np.ndarray, config: Config) -> np.ndarray:
    """uint8 RGB → what the model was trained on: its channel count and colour order (still uint8)."""
    if config.model.image_channels == 1:
        return luma(rgb)  # as train.data reads tiles for a grey model
    return rgb[:, :, ::-1] if config.image.color_order == "BGR" else rgb


def make_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """Batch of uint8 tiles → float32 class probabilities (scaling as in training: 0..1)."""
    def predict_batch(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch.astype(np.float32) / 255.0), dtype=np.float32)
    return predict_batch


def whole_pass(options: InferOptions, height: int, width: int) -> bool:
    """Whether the image goes through the network in one pass: by the pixels that pass holds (eight views pad a
    non-square image to a square, for the quarter turns), so the memory bound holds whatever --tta-mode."""
    pixels = max(height, width) ** 2 if options.tta == 8 else height * width
    return options.mode == "whole" and pixels <= options.whole_max_pixels


def predict_probability(image: np.ndarray, predict_batch, tile: int, options: InferOptions,
                        probability_out=None, confidence_out: np.ndarray | None = None):
    """Nucleus mask (bool H×W) by streaming the stitched prediction band by band; the nucleus probability
    (1 − background) goes into ``probability_out[y0:y1]`` (an array, or an NpyRowWriter) when given, and rounded
    to k/255 into ``confidence_out`` (uint8 H×W: a quarter of float32's memory, enough for per-nucleus means)."""
    from infer.stitch import stream_predict, whole_predict

    height, width = image.shape[:2]
    mask = np.zeros((height, width), bool)
    if whole_pass(options, height, width):
        bands = [(0, height, whole_predict(image, predict_batch, options.multiple, options.tta))]
    else:
        bands = stream_predict(image, predict_batch, tile, options.overlap, options.batch_size, options.weighting,
                               options.tta)
    for y0, y1, band in bands:
        # Blending and TTA means can put the background a rounding above 1: the saved map stays a probability.
        nucleus = np.clip(1.0 - band[:, :, 0], 0.0, 1.0)
        mask[y0:y1] = (nucleus > options.threshold) if band.shape[2] == 2 else band.argmax(axis=2) >= 1
        if probability_out is not None:
            probability_out[y0:y1] = nucleus
        if confidence_out is not None:
            confidence_out[y0:y1] = np.rint(nucleus * 255)
    return mask, probability_out


class NpyRowWriter:
    """A float32 .npy file written row band by row band, in order: the probability map of a huge scan never
    has to be in memory (a memory map would keep its dirty pages resident)."""

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.handle = path.open("wb")
        self.shape = shape
        self.rows_written = 0
        np.lib.format.write_array_header_1_0(
            self.handle, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                          "shape": shape})

    def __setitem__(self, rows: slice, values: np.ndarray) -> None:
        if rows.start != self.rows_written or values.shape[1:] != self.shape[1:]:
            raise ValueError("bands must arrive in order and span the full width")
        self.handle.write(np.ascontiguousarray(values, dtype="<f4").tobytes())
        self.rows_written = rows.stop

    def close(self) -> None:
        self.handle.close()
        if self.rows_written != self.shape[0]:
            raise ValueError(f"{self.handle.name}: {self.rows_written} of {self.shape[0]} rows written")


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _read_truth(image: Path, shape: tuple[int, ...], truth_of: Callable[[Path], Path | None] | None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, rule: str = "auto") -> Truth | None:
    """The image's ground truth (outline GT filled, with a warning), or None when not scored."""
    if truth_of is None:
        return None
    truth_path = truth_of(image)
    if truth_path is None:
        warnings.warn(f"no ground truth for {image.name}: not scored", stacklevel=3)
        return None
    truth = read_truth(truth_path, rule, max_pixels=max_pixels)
    if truth.mask.shape != shape:
        raise TruthError(f"{truth_path}: size {truth.mask.shape[1]}×{truth.mask.shape[0]} differs from {image.name} "
                         f"({shape[1]}×{shape[0]})")
    if truth.form == OUTLINE:
        warnings.warn(describe(truth, str(truth_path), rule), stacklevel=3)
    return truth


@dataclass
class ImageResult:
    """Everything one image's prediction gives: the outputs are written from this alone (``write_image``)."""

    path: Path
    mask: np.ndarray  # bool H×W, after clean-up
    labels: np.ndarray  # int32 H×W instance ids, 0 = background (split with --split-touching)
    nuclei: list[dict]  # measure_nuclei rows, one per label id
    truth: np.ndarray | None  # the ground-truth mask it was scored against
    scores: dict | None  # score_masks(truth, mask)
    row: dict  # its predictions.csv row


def predict_image(path: Path, rgb: np.ndarray, truth: np.ndarray | None, config: Config, predict_batch,
                  options: InferOptions, probability_out=None, truth_ignore: np.ndarray | None = None) -> ImageResult:
    """One image: probabilities → mask → clean-up → labels → measurements → scores (no file written but the
    streamed ``probability_out``). ``truth_ignore``: pixels scored as neither nucleus nor background."""
    from infer.measure import EDGES, drop_unconfident, measure_nuclei, nuclei_of
    from infer.stitch import count_tiles
    from train.scores import score_masks

    start = time.monotonic()
    tile = config.model.image_height
    height, width = rgb.shape[:2]
    tiles_mode = options.mode == "tiles" and (height, width) == (tile, tile)
    tile_options = InferOptions(**{**options.__dict__, "overlap": 0.0}) if tiles_mode else options
    confidence = np.zeros((height, width), np.uint8)
    mask, _ = predict_probability(model_input(rgb, config), predict_batch, tile, tile_options, probability_out,
                                  confidence)
    # mask, labels, GeoJSON and table show the same (with --split-touching, split) nuclei
    labels = nuclei_of(mask, options.min_area, options.fill_holes, options.exclude_border,
                       options.field_edges.get(path.name, EDGES), options.split_touching)
    mask = labels > 0
    if options.min_confidence > 0:
        found = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
        labels = drop_unconfident(labels, confidence, options.min_confidence)
        mask = labels > 0
        if found and int(labels.max()) < found / 2:  # a model unsure of most of what it finds: undertrained?
            warnings.warn(f"{path.name}: --min-confidence {options.min_confidence:g} dropped "
                          f"{found - int(labels.max())} of {found} nuclei; the model is unsure of most of what it "
                          "finds (trained too briefly?): check with --min-confidence 0", stacklevel=2)
    nuclei = measure_nuclei(labels, rgb, confidence)
    row = {"file": path.name, "status": "ok", "height": height, "width": width,
           "tiles": 1 if tiles_mode or whole_pass(options, height, width)
           else count_tiles(height, width, tile, options.overlap),
           "nuclei": len(nuclei), "nucleus_area_fraction": float(mask.mean()),
           "seconds": time.monotonic() - start}
    scores = score_masks(truth, mask, ignore=truth_ignore) if truth is not None else None
    return ImageResult(path, mask, labels, nuclei, truth, scores, row)


def write_image(folder: Path, result: ImageResult, rgb: np.ndarray, options: InferOptions) -> None:
    """Every per-image output of ``result``: mask, labels, GeoJSON, overlay (drawn on ``rgb`` itself: its last use)."""
    import json

    from infer.outputs import label_image, nuclei_geojson
    from infer.overlay import draw_overlay

    stem = result.path.stem
    write_png(folder / f"{stem}.png", result.mask.astype(np.uint8) * 255)
    if options.labels:
        ids, suffix = label_image(result.labels)
        if suffix == ".png":
            write_png(folder / "labels" / f"{stem}.png", ids)
        else:
            import cv2

            warnings.warn(f"{result.path.name}: {int(ids.max())} nuclei, more than a 16-bit PNG holds: "
                          f"labels/{stem}.tif is 32-bit", stacklevel=2)
            if not cv2.imwrite(str(folder / "labels" / f"{stem}.tif"), ids, [cv2.IMWRITE_TIFF_COMPRESSION, 1]):
                raise OSError(f"cannot write labels/{stem}.tif")
    if options.geojson:
        text = json.dumps(nuclei_geojson(result.labels, result.nuclei), separators=(",", ":"))
        (folder / "geojson" / f"{stem}.geojson").write_text(text + "\n")
    write_png(folder / "overlays" / f"{stem}.png", draw_overlay(rgb, result.labels, truth=result.truth,
                                                                  in_place=True))


def predict_folder(config: Config, model, inputs: Sequence[Path], output: Path, options: InferOptions,
                   truth_of: Callable[[Path], Path | None] | None = None, overwrite: bool = False,
                   progress: Callable[[Path], None] | None = None, record: dict | None = None) -> InferResult:
    """Predict every input into a temp folder beside ``output``, then rename it into place; ``truth_of``
    gives an input's ground truth to score against (None: not scored); ``record`` becomes infer.json."""
    from infer.measure import MEASUREMENT_COLUMNS
    from train.scores import pool_scores

    if output.exists() and not overwrite:
        raise InferError(f"{output} exists (use --overwrite to replace it)")
    if config.model.image_width != config.model.image_height:
        raise InferError(f"{config.path}: stitching needs square tiles, [model] image_width ≠ image_height")
    predict_batch = make_predictor(model)
    result = InferResult()
    nuclei_rows: list[dict] = []
    try:
        with atomic_output(output, overwrite) as temp:
            for name in ["overlays", *(["labels"] if options.labels else []),
                         *(["geojson"] if options.geojson else []), *(["probabilities"] if options.save_prob else [])]:
                (temp / name).mkdir()
            for path in inputs:
                try:
                    rgb = read_image(path, options.max_pixels)
                    truth = _read_truth(path, rgb.shape[:2], truth_of, options.max_pixels, options.gt_rule)
                except (ImageReadError, TruthError) as err:
                    # One bad file costs its own prediction only: named here, in predictions.csv and the exit status.
                    warnings.warn(f"skipping {err}", stacklevel=2)
                    result.failures.append(str(path))
                    result.rows.append({"file": path.name, "status": "failed", "error": str(err)})
                    if progress:
                        progress(path)
                    continue
                probability = None
                if options.save_prob:
                    probability = NpyRowWriter(temp / "probabilities" / f"{path.stem}.npy", rgb.shape[:2])
                image = predict_image(path, rgb, None if truth is None else truth.mask, config, predict_batch, options,
                                      probability, None if truth is None else truth.ignore)
                if probability is not None:
                    probability.close()
                write_image(temp, image, rgb, options)
                nuclei_rows.extend({"image": path.name, **nucleus} for nucleus in image.nuclei)
                if image.scores is not None:
                    result.scores.append({"file": path.name, **image.scores})
                result.rows.append(image.row)
                if progress:
                    progress(path)
            if result.rows and len(result.failures) == len(result.rows):
                # Nothing predicted (an unmounted share, a wrong folder): an existing output stays as it was.
                raise InferError(f"none of the {len(result.rows)} input(s) could be read (first: "
                                 f"{result.rows[0]['error']}); nothing written to {output}")
            if record is not None:
                import json

                summary = {"predicted": len(result.rows) - len(result.failures), "failed": result.failures}
                (temp / "infer.json").write_text(json.dumps({**record, **summary}, indent=1, default=str) + "\n")
            _write_csv(temp / "predictions.csv", PREDICTION_COLUMNS, result.rows)
            _write_csv(temp / "nuclei.csv", ("image", *MEASUREMENT_COLUMNS), nuclei_rows)
            if result.scores:
                result.pooled = pool_scores([{k: v for k, v in row.items() if k != "file"} for row in result.scores])
                per_image = [k for k in result.scores[0] if k != "file"]
                columns = ["file", *per_image, *[k for k in result.pooled if k not in per_image]]  # + pooled-only
                _write_csv(temp / "scores.csv", columns, [*result.scores, {"file": "POOLED", **result.pooled}])
            # Leaving the block publishes: an existing output is replaced only now that everything is written.
    except OutputError as err:
        raise InferError(str(err)) from None
    return result
