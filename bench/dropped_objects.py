"""What a clean-up step removes, counted on two saved predictions of the same models: right or wrong to drop?

    python bench/dropped_objects.py --runs OUT [--runs OUT2 ...] --before reinfer-preset --after reinfer-conf085 \
        [--picture dropped.jpg]

For every held-out field of a bench-folds run (GT read as prep reads it) it finds the predicted objects of
``--before`` (8-connected, as the scorer counts) that ``--after`` no longer has any pixel of, and sorts them:
*extra* when the object touches no annotated nucleus (dropping it was right), *nucleus* when it does (a nucleus
the ground truth has, now lost or left to another object). ``--picture`` shows each one on ``--before``'s overlay
(green: ground truth, red: prediction), the extras first. The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import click  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_folds import centred_crops, lone_objects, montage  # noqa: E402
from error_census import CROP, run_fields  # noqa: E402

KINDS = ("extra", "nucleus")


def dropped_objects(before: np.ndarray, after: np.ndarray, truth: np.ndarray) -> list[tuple[str, int, tuple[int, int]]]:
    """(kind, area px, (x, y) centre) of each 8-connected object of ``before`` that has no pixel in ``after``:
    kind "extra" when it touches no pixel of ``truth``, else "nucleus"."""
    before, after, truth = (np.asarray(a, bool) for a in (before, after, truth))
    if not before.shape == after.shape == truth.shape:
        raise ValueError(f"shapes differ: before {before.shape}, after {after.shape}, truth {truth.shape}")
    labels, dropped = lone_objects(before, after)  # an object with no pixel in after is a lone one
    if not dropped:
        return []
    touches = np.bincount(labels[truth & (labels > 0)], minlength=int(labels.max()) + 1) > 0
    return [("nucleus" if touches[label_id] else "extra", area, centre) for label_id, area, centre in dropped]

def census(runs: list[Path], before: str, after: str, crops: list | None = None) -> dict:
    """Per run: how many objects ``after`` dropped of each kind, per field and in all; with ``crops``, each
    dropped object's (caption, crop of ``before``'s overlay) added, extras first."""
    from prep.truth import read_truth

    result, found = {}, []
    for run in runs:
        after_masks = {stem: mask for stem, _, mask, _ in run_fields(run, after)}
        fields = {}
        for stem, truth_path, before_path, overlay_path in run_fields(run, before):
            truth = read_truth(truth_path).mask
            masks = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0 for path in (before_path, after_masks[stem])]
            dropped = dropped_objects(*masks, truth)
            fields[stem] = {kind: sum(k == kind for k, _, _ in dropped) for kind in KINDS}
            if crops is not None and dropped:
                overlay = cv2.imread(str(overlay_path))
                if overlay is None:
                    raise click.ClickException(f"{overlay_path}: no overlay to draw the dropped objects on")
                cuts = centred_crops(overlay, [centre for _, _, centre in dropped], CROP)
                found += [(kind, f"{run.name} {kind} {stem} {x},{y} ({area} px)", cut)
                          for (kind, area, (x, y)), cut in zip(dropped, cuts, strict=True)]
        result[str(run)] = {**{kind: sum(field[kind] for field in fields.values()) for kind in KINDS},
                            "fields": fields}
    if crops is not None:
        crops += [(caption, cut) for kind in KINDS for k, caption, cut in found if k == kind]
    return result


@click.command()
@click.option("--runs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A bench-folds --out folder of whole fields (repeat for several runs).")
@click.option("--before", required=True, help="The saved masks without the step: a reinfer_folds.py variant folder "
                                              "(reinfer-NAME) or infer.")
@click.option("--after", required=True, help="The saved masks with it, of the same models.")
@click.option("--picture", "picture_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every dropped object here, magnified on --before's overlay (PNG or JPEG).")
def main(runs: tuple[Path, ...], before: str, after: str, picture_path: Path | None) -> None:
    """Count the objects --after drops from --before, by whether the ground truth has them."""
    crops = [] if picture_path else None
    result = census(list(runs), before, after, crops)
    for run, row in result.items():
        click.echo(f"{run}: {after} drops {row['extra'] + row['nucleus']} of {before}'s objects: {row['extra']} "
                   f"extra (touch no annotated nucleus), {row['nucleus']} touching an annotated nucleus")
    if picture_path and crops and not cv2.imwrite(str(picture_path), montage(crops, columns=8, size=2 * CROP)):
        raise click.ClickException(f"{picture_path}: cannot write the picture")
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
