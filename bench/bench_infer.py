"""Inference benchmarks with the demo_cpu architecture (seeded weights: speed does not depend on training):
stitched full-image prediction at overlap 0 against a bare model.predict over the same tiles (side by side,
interleaved), tiles/s, the cost of overlap 0.25 and of flip TTA, and the peak RSS of `infer` on an
8192×8192 image. The last line printed is one JSON object.

``--smoke``: the same code paths at toy sizes (one round, a 1024² image, the peak-RSS run on 1024²), so `make test`
can check that the bench still runs; its figures mean nothing."""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from infer.run import InferOptions, make_predictor, model_input, predict_probability  # noqa: E402
from infer.stitch import count_tiles  # noqa: E402
from prep.imageio import write_png  # noqa: E402
from prep.synth import synth_field  # noqa: E402
from train.config import load_config  # noqa: E402
from train.model import build_model  # noqa: E402

SMOKE = "--smoke" in sys.argv[1:]
ROUNDS = 1 if SMOKE else 3
BATCH = 4
IMAGE = 1024 if SMOKE else 2048  # the stitched-vs-bare image's edge
BIG = 1024 if SMOKE else 8192  # the peak-RSS image's edge
FIELD = 256 if SMOKE else 1024  # the timed whole field's edge (field_1024_*: an ISBI field)


def demo_project(root: Path) -> tuple[Path, object, object]:
    """demo_cpu.config copied to ``root`` with the seeded model's weights in its model_dir: (path, config, model)."""
    config_path = root / "train_eval_infer.config"
    config_path.write_text((REPO / "configs" / "demo_cpu.config").read_text())
    overrides = ["train.model_dir=./models"]
    config = load_config(config_path, overrides)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    config.train.model_dir.mkdir(parents=True)
    model.save_weights(str(config.train.model_dir / "best.weights.h5"))
    return config_path, config, model


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def stitched_vs_bare(model, image: np.ndarray) -> dict:
    tile = 512
    height, width = image.shape[:2]
    tiles = np.stack([image[y:y + tile, x:x + tile] for y in range(0, height, tile) for x in range(0, width, tile)])
    floats = tiles.astype(np.float32) / 255.0
    predictor = make_predictor(model)
    plain = InferOptions(overlap=0.0, batch_size=BATCH)
    overlapped = InferOptions(overlap=0.25, batch_size=BATCH)
    flipped = InferOptions(overlap=0.0, batch_size=BATCH, tta=4)
    model.predict(floats[:BATCH], batch_size=BATCH, verbose=0)  # trace both paths once
    predict_probability(image[:tile, :tile], predictor, tile, plain)
    bare, stitched, with_overlap, with_tta = [], [], [], []
    for _ in range(ROUNDS):  # interleaved, so machine noise hits every variant alike
        bare.append(timed(lambda: model.predict(floats, batch_size=BATCH, verbose=0)))
        stitched.append(timed(lambda: predict_probability(image, predictor, tile, plain)))
        with_overlap.append(timed(lambda: predict_probability(image, predictor, tile, overlapped)))
        with_tta.append(timed(lambda: predict_probability(image, predictor, tile, flipped)))
    bare_s, stitched_s = statistics.median(bare), statistics.median(stitched)
    return {
        "image": f"{height}x{width}", "tiles_overlap0": len(tiles),
        "tiles_overlap025": count_tiles(height, width, tile, 0.25),
        "bare_predict_s": bare_s, "stitched_s": stitched_s, "stitched_vs_bare": stitched_s / bare_s,
        "tiles_per_s": len(tiles) / stitched_s,
        "overlap025_s": statistics.median(with_overlap), "overlap025_vs_overlap0": statistics.median(with_overlap)
        / stitched_s, "tta4_s": statistics.median(with_tta), "tta4_vs_plain": statistics.median(with_tta) / stitched_s,
    }


# The settings a whole 1024² field is timed at: bench-real's shipped infer flags first (field_1024_s), then the
# alternatives side by side, each timed through infer's per-image core (predict, clean, label, measure).
FIELD_VARIANTS = {
    "tiles_tta8": "--mode full --tta --tta-mode 8 --precision float32",
    "tiles_tta4": "--mode full --tta --tta-mode 4 --precision float32",
    "tiles_tta0": "--mode full --no-tta --precision float32",
    "tiles_overlap0_tta0": "--mode full --no-tta --overlap 0 --precision float32",
    "whole_tta8": "--mode whole --tta --tta-mode 8 --precision float32",
    "whole_tta4": "--mode whole --tta --tta-mode 4 --precision float32",
    "whole_tta2": "--mode whole --tta --tta-mode 2 --precision float32",
    "whole_tta0": "--mode whole --no-tta --precision float32",
    "whole_tta4_bf16": "--mode whole --tta --tta-mode 4 --precision bfloat16",
    "whole_tta2_bf16": "--mode whole --tta --tta-mode 2 --precision bfloat16",
    "whole_tta4_xla": "--mode whole --tta --tta-mode 4 --xla --precision float32",
}
POST_FLAGS = "--min-area 30 --fill-holes --exclude-border"  # bench-real's clean-up, the same in every variant


def field_timings(root: Path) -> dict:
    """Median wall seconds per 1024² grey field with configs/bench_cpu.config's architecture (seeded weights)."""
    from bench_real import DEFAULT_INFER_FLAGS

    from infer.cli import cli as infer_cli
    from infer.cli import options_from
    from infer.run import predict_image
    from train.model import load_trained

    config_path = root / "bench_cpu.config"
    config_path.write_text((REPO / "configs" / "bench_cpu.config").read_text())
    config = load_config(config_path, ["train.model_dir=./bench-models"])
    keras.utils.set_random_seed(0)
    build_model(config).save_weights(str(_ready(config.train.model_dir) / "best.weights.h5"))
    rgb, _ = synth_field((FIELD, FIELD), np.random.default_rng(5))
    def options_of(flags: str):
        params = infer_cli.make_context("infer", ["--config", str(config_path), *flags.split()]).params
        return options_from(config, **params)

    variants = {name: options_of(f"{flags} {POST_FLAGS}") for name, flags in FIELD_VARIANTS.items()}
    shipped_options = options_of(DEFAULT_INFER_FLAGS)
    shipped = next((name for name, options in variants.items() if options == shipped_options), None)
    if shipped is None:
        variants["shipped"] = shipped_options
        shipped = "shipped"
    models, runs = {}, {}
    path = Path("EDF1024.png")
    for name, options in variants.items():
        key = (options.mode == "whole", options.precision, options.xla)  # one model per way of computing
        if key not in models:
            models[key] = load_trained(config, (None, None) if key[0] else None, precision=options.precision,
                                       jit_compile=options.xla)
        runs[name] = functools.partial(predict_image, path, rgb, None, config, make_predictor(models[key]),
                                       options)
        runs[name]()  # trace this input size once
    rounds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):  # interleaved, so machine noise hits every variant alike
        for name, run in runs.items():
            rounds[name].append(timed(run))
    timings = {name: statistics.median(seconds) for name, seconds in rounds.items()}
    figures = {f"field_1024_{name}_s": seconds for name, seconds in timings.items()}
    figures["field_1024_s"] = timings[shipped]
    figures["field_1024_shipped"] = shipped
    figures["field_1024_old_default_s"] = timings["tiles_tta8"]  # bench-real's flags until 2026-12-01
    return figures


def _ready(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def peak_rss_8192(config_path: Path, root: Path) -> dict:
    image, _ = synth_field((BIG, BIG), np.random.default_rng(8))
    source = root / "big"
    source.mkdir()
    write_png(source / f"EDF{BIG}.png", image)
    del image
    code = (
        # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec.
        "import re, sys; from infer.cli import cli\n"
        "try:\n    cli.main(sys.argv[1:], standalone_mode=False)\n"
        "finally:\n    print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, "--config", str(config_path), "--set", "train.model_dir=./models",
         "--input", str(source), "--output", str(root / "big_out"), "--no-progress", "--save-prob"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if result.returncode != 0:
        raise SystemExit(f"infer on {BIG}² failed:\n{result.stderr[-2000:]}")
    return {"rss_8192_mb": int(result.stdout.strip().splitlines()[-1]) / 1024,
            "seconds_8192": time.perf_counter() - start}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        root = Path(tmp)
        config_path, config, model = demo_project(root)
        rgb, _ = synth_field((IMAGE, IMAGE), np.random.default_rng(4))
        figures = stitched_vs_bare(model, model_input(rgb, config))  # what infer feeds the model: its channels
        print(f"{figures['image']} image, {figures['tiles_overlap0']} tiles of 512², batch {BATCH}: stitched "
              f"{figures['stitched_s']:.2f} s vs bare model.predict {figures['bare_predict_s']:.2f} s → "
              f"{figures['stitched_vs_bare']:.3f}×; {figures['tiles_per_s']:.1f} tiles/s")
        print(f"overlap 0.25 ({figures['tiles_overlap025']} tiles): {figures['overlap025_vs_overlap0']:.2f}× the "
              f"overlap-0 time; flip TTA (4 passes): {figures['tta4_vs_plain']:.2f}×")
        figures.update(field_timings(root))
        print(f"one 1024² grey field, bench_cpu architecture, bench-real's infer flags "
              f"({figures['field_1024_shipped']}): {figures['field_1024_s']:.2f} s (median of {ROUNDS}); "
              + ", ".join(f"{name} {figures[f'field_1024_{name}_s']:.2f} s" for name in FIELD_VARIANTS))
        figures.update(peak_rss_8192(config_path, root))
        print(f"{BIG}×{BIG} image, overlap 0.25, --save-prob: peak RSS {figures['rss_8192_mb']:.0f} MiB, "
              f"{figures['seconds_8192']:.0f} s")
    figures["cpu_count"] = os.cpu_count()
    figures["big_image"] = BIG
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
