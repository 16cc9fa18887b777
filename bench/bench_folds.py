"""bench-real over every leave-sources-out fold, reported per field, per fold and as one mean.

    python bench/bench_folds.py --fields ../shared/data/isbi2014/EDF [--folds 5] [--out DIR] [--set k=v ...]
    python bench/bench_folds.py --tiles ../shared/data/edf-real/tiles [--folds 6] [--out DIR] [--set k=v ...]

Makes the folds (`make_folds.py`): of whole ISBI fields, split by field (the default set: 10 real fields as
published, 5 folds of 2), or of reference-style tiles grouped by the source id in their name. Runs `bench_real`
on each in turn (its ≤ 15-minute CPU training included, so 5 folds take about 80 minutes), prints one line per
fold as it finishes, and as its last line one JSON object: `nucleus_dice` etc. are means over the folds (each
fold weighs the same, however many images it holds), `*_images` the means over every held-out image,
`field_dice_min` the worst image, `images` each held-out image's own scores (Dice, object F1, FNRo, extra and
missed nuclei, infer seconds) with its fold, and `folds` each fold's summary.
With --out, `summary.json` there holds that object and `overlays.png` shows every held-out image (ground truth
green, prediction red) with its fold and Dice: red alone is an extra object, green alone a missed nucleus;
`errors.png` shows each of those, magnified, with its image and place.
`--only-folds 3,4` runs those folds of the same plan alone (its means are over them only).
A stopped run (a killed process, a session's end) goes on with --resume and the same options: `run.json` in --out
holds the run's options and folds, each finished fold leaves `foldK/summary.json` (with the code it ran on), and only
the folds without one run again.
The default --folds 6 on the reference's 6 sources is leave-one-source-out: every model trains on all
sources but the one it is scored on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import click  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_real import (  # noqa: E402
    DEFAULT_PREP_FLAGS,
    VALID_ON,
    bench_real,
    check_ignored_colour,
    few_steps_warning,
    run_options,
)
from make_folds import make_field_folds, make_folds  # noqa: E402

RUN_FILE = "run.json"  # in --out: the run's options and fold plan, which --resume must match
FOLD_SUMMARY = "summary.json"  # in --out/foldK: that fold's finished summary; --resume keeps the fold
FOLD_MEANS = ("nucleus_dice", "nucleus_iou", "object_dice", "fnro", "f1", "outline_dice")
# A wall-clock budget buys as many epochs as the host's speed allows: a fold with fewer than this share of the
# run's most epochs trained on a slower host (a shared machine), and the run's figures mix two training lengths.
SHORT_EPOCHS = 0.85


def combine(folds: list[dict]) -> dict:
    """Means over folds of each fold's summary, the mean over all held-out images, and the folds themselves."""
    if not folds:
        raise ValueError("no folds to combine")
    per_image = [dice for fold in folds for dice in fold["per_image_dice"].values()]
    images = {name: {"fold": fold["fold"], **scores}
              for fold in folds for name, scores in fold.get("per_image", {}).items()}
    combined = {key: round(fmean(fold[key] for fold in folds), 4) for key in FOLD_MEANS}
    combined.update({
        "nucleus_dice_min": min(fold["nucleus_dice"] for fold in folds),
        "nucleus_dice_images": round(fmean(per_image), 4),
        "field_dice_min": min(per_image),
        "test_images": len(per_image),
        "n_extra": sum(fold["n_extra"] for fold in folds),
        "n_missed": sum(fold["n_missed"] for fold in folds),
        "train_seconds": round(sum(fold["train_seconds"] for fold in folds), 1),
        "train_seconds_max": max(fold["train_seconds"] for fold in folds),
    })
    if all("epochs" in fold for fold in folds):  # the training each fold got within its budget
        combined.update({"epochs_min": min(fold["epochs"] for fold in folds),
                         "epochs_max": max(fold["epochs"] for fold in folds)})
    if all(fold.get("steps") for fold in folds):
        combined.update({"steps_min": min(fold["steps"] for fold in folds),
                         "steps_max": max(fold["steps"] for fold in folds),
                         "train_precision": sorted({fold.get("train_precision") or "?" for fold in folds})})
    if images:
        combined.update({
            "f1_images": round(fmean(image["f1"] for image in images.values()), 4),
            "fnro_images": round(fmean(image["fnro"] for image in images.values()), 4),
            "infer_seconds_per_image": round(fmean(image["infer_seconds"] for image in images.values()), 2),
            "images": images,
        })
    peers = [fold["stardist"] for fold in folds if "stardist" in fold]
    if peers:
        peer_fields = {name: {"fold": fold["fold"], **scores} for fold in folds if "stardist" in fold
                       for name, scores in fold["stardist"]["per_field"].items()}
        combined["stardist"] = {
            **{key: round(fmean(peer[key] for peer in peers), 4) for key in ("nucleus_dice", "f1", "fnro")},
            "field_dice_min": min(field["nucleus_dice"] for field in peer_fields.values()),
            "n_extra": sum(peer["n_extra"] for peer in peers), "n_missed": sum(peer["n_missed"] for peer in peers),
            "seconds_per_field": round(fmean(field["seconds"] for field in peer_fields.values()), 3),
            "train_seconds": round(sum(peer["train_seconds"] for peer in peers), 1),
            "folds": len(peers), "images": peer_fields,
        }
    codes = sorted({fold["code"] for fold in folds if fold.get("code")})
    if codes:  # more than one where a resumed run's folds ran on other commits
        combined["code"] = codes
    combined["folds"] = folds
    return combined


def short_budget_warning(combined: dict, share: float = SHORT_EPOCHS) -> str | None:
    """A warning naming the folds that got fewer than ``share`` of the run's most epochs, or None."""
    most = combined.get("epochs_max")
    if not most:
        return None
    short = [fold for fold in combined["folds"] if fold["epochs"] < share * most]
    if not short:
        return None
    named = ", ".join(f"fold{fold['fold']} {fold['epochs']}" for fold in short)
    return (f"warning: epochs per fold {combined['epochs_min']}-{most}; {named} got under {share:.0%} of {most} "
            "in the same wall-clock budget (a slower host): compare this run with others only with that in mind")


def fold_line(fold: dict) -> str:
    images = f"{fold['test_images']} image{'' if fold['test_images'] == 1 else 's'}"
    return (f"fold{fold['fold']} (test {' '.join(fold['test_sources'])}; {images}): "
            f"nucleus Dice {fold['nucleus_dice']:.4f} (outlines alone {fold['outline_dice']:.4f}: "
            f"{fold['n_extra']} extra, {fold['n_missed']} missed), FNRo {fold['fnro']:.4f}, "
            + (f"object F1 {fold['f1']:.4f}, " if "f1" in fold else "")
            + f"{fold['epochs']} epochs in {fold['train_seconds']:.0f} s"
            + (f", {fold['infer_seconds_per_image']:.1f} s per image at inference"
               if "infer_seconds_per_image" in fold else "")
            + (f"; StarDist {fold['stardist']['nucleus_dice']:.4f}, object F1 {fold['stardist']['f1']:.4f}"
               if "stardist" in fold else ""))


def montage(panels: list[tuple[str, np.ndarray]], columns: int = 4, size: int = 320) -> np.ndarray:
    """The images (HxWx3 uint8), each scaled to ``size`` px wide with its caption above it, in rows of ``columns``."""
    if not panels:
        raise ValueError("no images for the montage")
    caption_height = 22
    cells = []
    for caption, image in panels:
        height = round(image.shape[0] * size / image.shape[1])
        cell = np.full((caption_height + height, size, 3), 255, np.uint8)
        cell[caption_height:] = cv2.resize(image, (size, height), interpolation=cv2.INTER_AREA)
        cv2.putText(cell, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(cell)
    cell_height = max(cell.shape[0] for cell in cells)
    cells += [np.full((cell_height, size, 3), 255, np.uint8)] * (-len(cells) % columns)
    padded = [np.pad(cell, ((0, cell_height - cell.shape[0]), (0, 0), (0, 0)), constant_values=255) for cell in cells]
    rows = [np.hstack(padded[start:start + columns]) for start in range(0, len(padded), columns)]
    return np.vstack(rows)


def overlay_panels(out: Path, folds: list[dict]) -> list[tuple[str, np.ndarray]]:
    panels = []
    for fold in folds:
        for name, dice in fold["per_image_dice"].items():
            image = cv2.imread(str(out / f"fold{fold['fold']}" / "infer" / "overlays" / f"{Path(name).stem}.png"))
            if image is not None:
                stem = Path(name).stem.removeprefix("EDF_")
                short = stem if len(stem) <= 30 else f"{stem[:9]}..{stem[-19:]}"  # keep the kind and the source
                panels.append((f"fold{fold['fold']} {short} {dice:.3f}", image))
    return panels


ERROR_CROP = 120  # px of the field around each extra or missed nucleus in errors.png


def lone_objects(objects: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, tuple[int, int]]]]:
    """The 8-connected labels of ``objects`` (as the scorer counts) and (label id, area, (x, y) centre) of each
    object that touches no pixel of ``other``."""
    from scipy import ndimage

    labels, count = ndimage.label(objects, structure=np.ones((3, 3)))
    if not count:
        return labels, []
    touched = np.bincount(labels[other & (labels > 0)], minlength=count + 1) > 0
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    centres = ndimage.center_of_mass(objects, labels, range(1, count + 1))
    return labels, [(label_id, int(areas[label_id]), (round(x), round(y)))
                    for label_id, (y, x) in enumerate(centres, start=1) if not touched[label_id]]


def centred_crops(image: np.ndarray, centres: list[tuple[int, int]], size: int) -> list[np.ndarray]:
    """``size``² cuts of ``image`` centred on each (x, y), white beyond its border."""
    half = size // 2
    padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    return [padded[y:y + size, x:x + size] for x, y in centres]


def error_crops(overlay: np.ndarray, prediction: np.ndarray, truth: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """("extra x,y" | "missed x,y", crop of ``overlay`` centred on it) for every predicted object that touches no
    annotated nucleus and every annotated nucleus that no prediction touches (8-connected, as the scorer counts)."""
    found = [(kind, centre) for kind, objects, other in (("extra", prediction, truth), ("missed", truth, prediction))
             for _, _, centre in lone_objects(objects, other)[1]]
    crops = centred_crops(overlay, [centre for _, centre in found], ERROR_CROP)
    return [(f"{kind} {x},{y}", crop) for (kind, (x, y)), crop in zip(found, crops, strict=True)]


def error_panels(out: Path, folds: list[dict]) -> list[tuple[str, np.ndarray]]:
    """Every extra object and missed nucleus of every held-out image, from its saved mask, ground truth (read as
    prep reads it) and overlay: what the ground truth's conventions leave unannotated, counted and shown."""
    from prep.truth import read_truth

    panels = []
    for fold in folds:
        infer_dir = out / f"fold{fold['fold']}" / "infer"
        test_dir = out / "folds" / f"fold{fold['fold']}" / "test"
        for name in fold["per_image_dice"]:
            stem = Path(name).stem
            overlay = cv2.imread(str(infer_dir / "overlays" / f"{stem}.png"))
            prediction = cv2.imread(str(infer_dir / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
            truth_path = test_dir / f"{stem}_GT.png"
            if overlay is None or prediction is None or not truth_path.is_file():
                continue
            truth = read_truth(truth_path).mask
            short = stem.removeprefix("EDF_")[-14:]
            panels += [(f"{short} {caption}", crop) for caption, crop in error_crops(overlay, prediction > 0, truth)]
    return panels


def code_version() -> str | None:
    """The repository's commit (with -dirty when the tree has changes), or None outside a git checkout."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=7"],
                              capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def run_options_record(data: Path, folds: int, config: Path, overrides: Sequence[str], infer_flags: Sequence[str],
                       synth: int, valid_on: str, prep_flags: Sequence[str], whole_fields: bool, peer: bool,
                       synth_only: bool, only_folds: Sequence[int] | None = None) -> dict:
    """What makes two runs the same run: --resume refuses to finish a run with anything else."""
    from prep.edf import file_sha256

    return {"data": str(data.resolve()), "whole_fields": whole_fields, "folds": folds,
            "config_sha256": file_sha256(config), "overrides": list(overrides),
            "infer_flags": list(infer_flags), "synth": synth, "valid_on": valid_on, "prep_flags": list(prep_flags),
            "peer": peer, "synth_only": synth_only, "only_folds": sorted(only_folds) if only_folds else None}


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)


def resumed_plan(out: Path, options: dict) -> list[dict]:
    """The fold plan of the stopped run in ``out``, after checking it was run with ``options``."""
    record_path = out / RUN_FILE
    if not record_path.is_file():
        raise ValueError(f"{out}: no {RUN_FILE}, so no run of bench-folds to resume there")
    record = json.loads(record_path.read_text())
    differing = [f"{key} (the run's {record['options'].get(key)!r}, now {value!r})"
                 for key, value in options.items() if record["options"].get(key) != value]
    if differing:
        raise ValueError(f"{record_path}: --resume needs the run's own options; these differ: " + "; ".join(differing))
    return record["plan"]


def bench_folds(data: Path, out: Path, folds: int, config: Path, overrides: list[str], infer_flags: list[str],
                synth: int, valid_on: str = VALID_ON[0], echo=click.echo,
                prep_flags: Sequence[str] = DEFAULT_PREP_FLAGS, whole_fields: bool = False,
                peer: bool = False, synth_only: bool = False, resume: bool = False,
                only_folds: Sequence[int] | None = None) -> dict:
    """``data``: whole ISBI fields (``whole_fields``) or reference-style tiles; ``peer``: StarDist on every fold
    too (bench_peer), trained in the same budget on the same fields, after ours (never beside it); ``resume``:
    finish the stopped run in ``out`` (same options), keeping its finished folds; ``only_folds``: run these folds
    of the plan alone (the plan is the same as a whole run's), e.g. to finish a run whose folder is lost."""
    if only_folds and not set(only_folds) <= set(range(folds)):
        raise ValueError(f"--only-folds {','.join(map(str, sorted(only_folds)))}: the folds are 0..{folds - 1}")
    from train.config import load_config

    check_ignored_colour(prep_flags, load_config(config, overrides).mask.rgb_map)  # before the folds are written
    options = run_options_record(data, folds, config, overrides, infer_flags, synth, valid_on, prep_flags,
                                 whole_fields, peer, synth_only, only_folds)
    if resume:
        plan = resumed_plan(out, options)
    else:
        plan = (make_field_folds(data, out / "folds", folds) if whole_fields
                else make_folds(data, out / "folds", folds))
        _write_json(out / RUN_FILE, {"options": options, "plan": plan})
    summaries = []
    for fold in plan:
        if only_folds and fold["fold"] not in only_folds:
            continue
        fold_dir = out / "folds" / f"fold{fold['fold']}"
        finished = out / f"fold{fold['fold']}" / FOLD_SUMMARY
        if resume and finished.is_file():
            summaries.append(json.loads(finished.read_text()))
            echo(f"kept from the stopped run: {fold_line(summaries[-1])}")
            continue
        summary = bench_real(fold_dir / "train", fold_dir / "test", out / f"fold{fold['fold']}", config,
                             overrides, infer_flags, synth=synth, valid_on=valid_on, prep_flags=prep_flags,
                             synth_only=synth_only)
        if peer:
            from bench_peer import bench_peer

            summary["stardist"] = bench_peer(fold_dir / "train", fold_dir / "test", out / f"fold{fold['fold']}" /
                                             "stardist", config,
                                             seconds=peer_budget(config, overrides, summary["train_seconds"]))
        summaries.append({**fold, **summary, "code": code_version()})
        _write_json(finished, summaries[-1])
        echo(fold_line(summaries[-1]))
    panels = overlay_panels(out, summaries)
    if panels:
        cv2.imwrite(str(out / "overlays.png"), montage(panels))
    errors = error_panels(out, summaries)
    if errors:  # each extra object (red alone) and missed nucleus (green alone), magnified
        cv2.imwrite(str(out / "errors.png"), montage(errors, columns=8, size=2 * ERROR_CROP))
    combined = combine(summaries)
    if only_folds:  # not a whole run: its means are over these folds alone
        combined["only_folds"] = sorted(only_folds)
    for warning in (short_budget_warning(combined),
                    few_steps_warning(combined.get("steps_min"), ", ".join(combined.get("train_precision", [])))):
        if warning:
            echo(warning)
    # The printed JSON, kept beside the folds: a run is worth a row in bench/results/loso_runs.csv.
    _write_json(out / "summary.json", combined)
    return combined


def peer_budget(config: Path, overrides: Sequence[str], train_seconds: float) -> float:
    """StarDist's wall clock beside a fold: ours, as the --set overrides make it (max_train_seconds), or, for a run
    budgeted in steps, the seconds our fold actually trained."""
    from train.config import load_config

    return load_config(config, overrides).train.max_train_seconds or float(train_seconds)


@click.command()
@click.option("--fields", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Whole fields in ISBI layout (EDFnnn.png + EDFnnn_GT.png, GT as published): folds by field.")
@click.option("--tiles", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Reference-style tiles: images/ and masks/ named <source>_<row>x<col>.png; folds by source.")
@click.option("--folds", type=click.IntRange(min=2),
              help="Number of folds [default: 5 with --fields (2 of the 10 shared fields each), 6 with --tiles "
                   "(the number of sources: leave-one-source-out)].")
@click.option("--out", type=click.Path(path_type=Path), help="Keep every fold's run here (default: a temp folder).")
@click.option("--peer", is_flag=True, help="Also train and score StarDist 2D on every fold (bench_peer.py; needs "
                                           "the .[peers] extra; doubles the time).")
@click.option("--resume", is_flag=True, help="Finish the stopped run in --out: give its options again; its finished "
                                             "folds are kept, the others run again.")
@click.option("--only-folds", "only_folds", metavar="K[,K...]",
              help="Run these folds of the plan alone (numbered from 0, as in a whole run's fold0..): e.g. to finish "
                   "a stopped run whose folder is lost. The means are over these folds only.")
@run_options  # bench-real's own options, applied to every fold
def main(fields: Path | None, tiles: Path | None, folds: int | None, out: Path | None, peer: bool, resume: bool,
         only_folds: str | None, config: Path, overrides, infer_flags: str, synth: int, valid_on: str,
         synth_only: bool, prep_flags: list[str]) -> None:
    """Cross-validate bench-real over leave-sources-out folds of whole FIELDS or of TILES."""
    if (fields is None) == (tiles is None):
        raise click.UsageError("give one of --fields (whole ISBI fields) and --tiles (reference-style tiles)")
    if resume and (out is None or not (out / RUN_FILE).is_file()):
        raise click.BadParameter(f"--resume needs the --out folder of a stopped run (with its {RUN_FILE})",
                                 param_hint="--out")
    if not resume and out is not None and out.exists() and any(out.iterdir()):
        raise click.BadParameter(f"{out} is not empty; give a new folder (or --resume a stopped run there)",
                                 param_hint="--out")
    folds = folds or (5 if fields is not None else 6)
    chosen = None
    if only_folds is not None:
        try:
            chosen = sorted({int(k) for k in only_folds.split(",")})
        except ValueError:
            raise click.BadParameter(f"{only_folds!r} is not a comma-separated list of fold numbers",
                                     param_hint="--only-folds") from None
        if not chosen or not set(chosen) <= set(range(folds)):
            raise click.BadParameter(f"{only_folds!r}: the folds are 0..{folds - 1}", param_hint="--only-folds")
    if peer:
        from bench_peer import stardist_available

        if not stardist_available():
            raise click.UsageError("--peer needs StarDist: pip install -e '.[peers]'")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-folds-") as scratch:
            summary = bench_folds(fields or tiles, out or Path(scratch), folds, config, list(overrides),
                                  infer_flags.split(), synth, valid_on, prep_flags=prep_flags,
                                  whole_fields=fields is not None, peer=peer, synth_only=synth_only,
                                  resume=resume, only_folds=chosen)
    except ValueError as err:  # e.g. fewer sources than folds, or a tile name without a source id
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(summary))


if __name__ == "__main__":
    main()
