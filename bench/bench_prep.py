"""Prep benchmarks: barrel vs the reference's per-pixel loop, augmentation cost per written tile,
--workers scaling and peak RSS against the number of inputs. All ratios are measured side by side in
this one run (the machines are shared and noisy). The last line printed is one JSON object.

``--smoke``: the same code paths at toy sizes (one repeat, 256² fields), so `make test` can check that the bench
still runs; its figures mean nothing."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prep.augment import AugOptions, apply, barrel_map, barrel_map_naive, barrel_remap_tables, plan  # noqa: E402
from prep.cli import cli  # noqa: E402
from prep.imageio import read_image, read_mask  # noqa: E402
from prep.synth import synth_field, write_sample  # noqa: E402

REAL_TILE = REPO.parent / "shared" / "data" / "edf-real" / "tiles"
SMOKE = "--smoke" in sys.argv[1:]
REPEAT = 1 if SMOKE else None  # None: each timing's own count
FIELD = 256 if SMOKE else 1024  # edge of the synthetic fields that `prep run` tiles


def median_ms(function, repeat: int) -> float:
    times = []
    for _ in range(REPEAT or repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def a_tile() -> tuple[np.ndarray, np.ndarray, str]:
    if (REAL_TILE / "images" / "10001_1x0.png").is_file():
        image = read_image(REAL_TILE / "images" / "10001_1x0.png")
        mask = read_mask(REAL_TILE / "masks" / "10001_1x0.png").astype(np.uint8) * 255
        return image, mask, "real tile 10001_1x0"
    image, mask = synth_field(512, np.random.default_rng(0))
    return image, mask.astype(np.uint8) * 255, "synthetic tile"


def augmentation_timings() -> dict:
    image, mask, origin = a_tile()
    specs = {spec.kind: spec for spec in reversed(plan(AugOptions()))}  # first of each kind
    barrel = specs["barrel"]
    cx, cy = barrel.params["center"]
    start = time.perf_counter()
    barrel_map.cache_clear()
    barrel_remap_tables.cache_clear()
    barrel_remap_tables(512, 512, cx, cy, barrel.params["radius"], barrel.params["amount"])
    map_ms = 1000 * (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    barrel_ms = median_ms(lambda: apply(barrel, image, mask), 50)
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as inside `prep run`, where processes (--workers) are the parallelism
    barrel_1thread_ms = median_ms(lambda: apply(barrel, image, mask), 50)
    cv2.setNumThreads(threads)
    elastic_ms = median_ms(lambda: apply(specs["elastic"], image, mask, rng), 10)
    distortion_ms = median_ms(lambda: apply(specs["distort"], image, mask, rng), 10)

    def naive_tile():
        from prep.augment import remap

        maps = barrel_map_naive(512, 512, cx, cy, barrel.params["radius"], barrel.params["amount"])
        remap(image, mask, *maps)

    naive_ms = median_ms(naive_tile, 3)
    return {"tile": origin, "barrel_ms": barrel_ms, "barrel_1thread_ms": barrel_1thread_ms,
            "barrel_map_first_ms": map_ms, "elastic_ms": elastic_ms,
            "distortion_ms": distortion_ms, "naive_barrel_ms": naive_ms, "barrel_speedup": naive_ms / barrel_ms}


def timed_run(args: list[str]) -> tuple[float, int]:
    """Seconds and tiles written for one in-process `prep run` (no interpreter start-up in the figure)."""
    out = Path(args[args.index("--output") + 1])
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["run", *args, "--no-progress", "--overwrite"])
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"prep run failed: {result.output}")
    tiles = sum(1 for _ in (out / "train" / "images").iterdir())
    return seconds, tiles


def peak_rss_mb(input_dir: Path, out: Path) -> float:
    """Peak RSS of a fresh `prep run --workers 1` process, in MiB."""
    code = (
        # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec.
        "import re, sys; from prep.cli import cli\n"
        "try:\n    cli.main(sys.argv[1:], standalone_mode=False)\n"
        "finally:\n    print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "run", "--input", str(input_dir), "--output", str(out), "--workers", "1",
         "--split", "1,0,0", "--no-progress", "--overwrite"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
    )
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    figures = augmentation_timings()
    print(f"barrel tile (cached map, image+mask): {figures['barrel_ms']:.2f} ms; per-pixel Python loop: "
          f"{figures['naive_barrel_ms']:.0f} ms → {figures['barrel_speedup']:.0f}× "
          f"(first map {figures['barrel_map_first_ms']:.1f} ms) on a {figures['tile']}; with OpenCV on one "
          f"thread {figures['barrel_1thread_ms']:.2f} ms → "
          f"{figures['naive_barrel_ms'] / figures['barrel_1thread_ms']:.0f}×")
    print(f"elastic tile: {figures['elastic_ms']:.2f} ms; random-field distortion: {figures['distortion_ms']:.2f} ms")

    with tempfile.TemporaryDirectory(prefix="bench-prep-") as tmp:
        tmp = Path(tmp)
        write_sample(tmp / "four", count=4, size=FIELD, seed=1, progress=False)
        write_sample(tmp / "many", count=4 if SMOKE else 12, size=FIELD, seed=2, progress=False)
        tile = ["--tile-size", "128"] if SMOKE else []
        common = ["--input", str(tmp / "four"), "--split", "1,0,0", "--keep-empty", *tile]
        plain_s, plain_tiles = timed_run([*common, "--output", str(tmp / "plain"), "--no-augment", "--workers", "1"])
        aug_s, aug_tiles = timed_run([*common, "--output", str(tmp / "aug"), "--workers", "1"])
        aug2_s, aug2_tiles = timed_run([*common, "--output", str(tmp / "aug2"), "--workers", "2"])
        assert aug2_tiles == aug_tiles
        per_plain, per_aug = plain_s / plain_tiles, aug_s / aug_tiles
        print(f"prep run, 4 synthetic {FIELD}² images: --no-augment {plain_tiles} tiles in {plain_s:.2f} s "
              f"({1000 * per_plain:.1f} ms/tile); default augmentations {aug_tiles} tiles in {aug_s:.2f} s "
              f"({1000 * per_aug:.1f} ms/tile) → {per_aug / per_plain:.2f}× per tile")
        print(f"--workers 2: {aug2_s:.2f} s vs --workers 1: {aug_s:.2f} s → {aug_s / aug2_s:.2f}×")
        rss_4 = peak_rss_mb(tmp / "four", tmp / "rss4")
        rss_12 = peak_rss_mb(tmp / "many", tmp / "rss12")
        print(f"peak RSS, --workers 1, default augmentations: 4 images {rss_4:.0f} MiB, 12 images {rss_12:.0f} MiB")

    summary = {
        "barrel_ms": round(figures["barrel_ms"], 3),
        "naive_barrel_ms": round(figures["naive_barrel_ms"], 1),
        "barrel_speedup": round(figures["barrel_speedup"], 1),
        "barrel_1thread_ms": round(figures["barrel_1thread_ms"], 3),
        "barrel_1thread_speedup": round(figures["naive_barrel_ms"] / figures["barrel_1thread_ms"], 1),
        "barrel_map_first_ms": round(figures["barrel_map_first_ms"], 2),
        "elastic_ms": round(figures["elastic_ms"], 3),
        "distortion_ms": round(figures["distortion_ms"], 3),
        "plain_ms_per_tile": round(1000 * per_plain, 2),
        "aug_ms_per_tile": round(1000 * per_aug, 2),
        "aug_vs_plain_per_tile": round(per_aug / per_plain, 3),
        "workers1_s": round(aug_s, 2),
        "workers2_s": round(aug2_s, 2),
        "workers2_speedup": round(aug_s / aug2_s, 3),
        "peak_rss_mb_4_images": round(rss_4, 1),
        "peak_rss_mb_12_images": round(rss_12, 1),
        "cpu_count": os.cpu_count(),
        "max_rss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
