"""Inference benchmarks with the demo_cpu architecture (seeded weights: speed does not depend on training):
stitched full-image prediction at overlap 0 against a bare model.predict over the same tiles (side by side,
interleaved), tiles/s, the cost of overlap 0.25 and of flip TTA, and the peak RSS of `infer` on an
8192×8192 image. The last line printed is one JSON object."""

from __future__ import annotations

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

import keras  # noqa: E402
import numpy as np  # noqa: E402

from infer.run import InferOptions, make_predictor, predict_probability  # noqa: E402
from infer.stitch import count_tiles  # noqa: E402
from prep.imageio import write_png  # noqa: E402
from prep.synth import synth_field  # noqa: E402
from train.config import load_config  # noqa: E402
from train.fit import build_model  # noqa: E402

ROUNDS = 3
BATCH = 4


def demo_project(root: Path) -> tuple[Path, object]:
    """demo_cpu.config copied to ``root`` with the seeded model's weights in its model_dir."""
    config_path = root / "train_eval_infer.config"
    config_path.write_text((REPO / "configs" / "demo_cpu.config").read_text())
    overrides = ["train.model_dir=./models"]
    config = load_config(config_path, overrides)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    config.train.model_dir.mkdir(parents=True)
    model.save_weights(str(config.train.model_dir / "best.weights.h5"))
    return config_path, model


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


def peak_rss_8192(config_path: Path, root: Path) -> dict:
    image, _ = synth_field((8192, 8192), np.random.default_rng(8))
    source = root / "big"
    source.mkdir()
    write_png(source / "EDF8192.png", image)
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
        raise SystemExit(f"infer on 8192² failed:\n{result.stderr[-2000:]}")
    return {"rss_8192_mb": int(result.stdout.strip().splitlines()[-1]) / 1024,
            "seconds_8192": time.perf_counter() - start}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        root = Path(tmp)
        config_path, model = demo_project(root)
        image, _ = synth_field((2048, 2048), np.random.default_rng(4))
        figures = stitched_vs_bare(model, image)
        print(f"{figures['image']} image, {figures['tiles_overlap0']} tiles of 512², batch {BATCH}: stitched "
              f"{figures['stitched_s']:.2f} s vs bare model.predict {figures['bare_predict_s']:.2f} s → "
              f"{figures['stitched_vs_bare']:.3f}×; {figures['tiles_per_s']:.1f} tiles/s")
        print(f"overlap 0.25 ({figures['tiles_overlap025']} tiles): {figures['overlap025_vs_overlap0']:.2f}× the "
              f"overlap-0 time; flip TTA (4 passes): {figures['tta4_vs_plain']:.2f}×")
        figures.update(peak_rss_8192(config_path, root))
        print(f"8192×8192 image, overlap 0.25, --save-prob: peak RSS {figures['rss_8192_mb']:.0f} MiB, "
              f"{figures['seconds_8192']:.0f} s")
    figures["cpu_count"] = os.cpu_count()
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
