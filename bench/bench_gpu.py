"""Training and inference throughput of the full-size reference model on a GPU, mixed precision on and off.

    python bench/bench_gpu.py [--config configs/edf_cervical.config] [--tiles DIR] [--batch-sizes 8,2]
                              [--precisions float32,mixed_float16,mixed_bfloat16] [--size N] [--out FILE]

The model is the config's FlexUNet (the reference config: 512×512×3, 8 levels, 124,996,866 parameters) compiled as
`train fit` compiles it (optimizer, clipvalue, loss, metrics). It trains on a fixed batch of real tiles held on the
device, so the figures are the model's and not the input pipeline's (`make bench-train` measures that). Each
(precision, batch size) runs in a fresh process, so a failure or an out-of-memory stays in its row and each peak
memory figure is its own. The Keras backend is whatever KERAS_BACKEND says (the script runs on TensorFlow, JAX or
PyTorch: the model and losses are written in Keras ops).

Besides speed it checks that each precision *learns*: the loss on the fixed batch must stay finite and fall over
the timed steps (with float16 that also exercises Keras' loss scaling); 30-odd steps are too few for the model to
find nuclei (nucleus_dice_last stays near 0), the loss check is about the numbers staying sound. Peak memory is the
backend's peak for the whole process, so on JAX it includes XLA's compile-time convolution autotuning scratch.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_TILES = REPO.parent / "shared" / "data" / "edf-real" / "tiles"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def load_batch(tiles: Path, batch_size: int, size: tuple[int, int], config) -> tuple:
    """The first ``batch_size`` tiles (repeated when fewer), centre-cropped to ``size``: float images in [0, 1] with
    the model's channels and colour order (as `infer` feeds it), one-hot masks through the config's rgb_map."""
    import cv2
    import numpy as np

    from infer.run import model_input
    from prep.imageio import ImageReadError, read_image
    from train.config import IGNORE_CLASS

    UNKNOWN = IGNORE_CLASS - 1  # noqa: N806 - a colour rgb_map lacks
    names = sorted(p.name for p in (tiles / "images").glob("*.png"))
    if not names:
        raise SystemExit(f"bench-gpu: no PNG tiles in {tiles / 'images'}")
    rgb_map = config.mask.rgb_map
    num_classes = config.model.num_classes
    images, masks = [], []
    for i in range(batch_size):
        name = names[i % len(names)]
        mask = cv2.imread(str(tiles / "masks" / name), cv2.IMREAD_COLOR)
        try:
            image = model_input(read_image(tiles / "images" / name), config)
        except ImageReadError:
            image = None
        if image is None or mask is None:
            raise SystemExit(f"bench-gpu: cannot read {name} and its mask under {tiles}")
        top, left = (image.shape[0] - size[0]) // 2, (image.shape[1] - size[1]) // 2
        if top < 0 or left < 0:
            raise SystemExit(f"bench-gpu: tile {name} is {image.shape[:2]}, smaller than the model's {size}")
        window = (slice(top, top + size[0]), slice(left, left + size[1]))
        image, mask = image[window], cv2.cvtColor(mask[window], cv2.COLOR_BGR2RGB)
        labels = np.full(size, UNKNOWN, np.int64)
        for colour, cls in rgb_map.items():
            labels[np.all(mask == np.array(colour), axis=-1)] = cls
        if (labels == UNKNOWN).any():
            raise SystemExit(f"bench-gpu: mask {name} holds colours outside [mask] rgb_map {rgb_map}")
        images.append(image.astype(np.float32) / 255.0)
        # one-hot as train.data makes it: an ignored pixel (class -1) gets an all-zero row
        masks.append(np.vstack([np.eye(num_classes, dtype=np.float32), np.zeros((1, num_classes), np.float32)])[
            np.where(labels == IGNORE_CLASS, num_classes, labels)])
    return np.stack(images), np.stack(masks)


def peak_device_bytes() -> int | None:
    """Peak accelerator memory of this process, from whichever backend runs it (None on a CPU)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return None if device.platform == "cpu" else int(device.memory_stats()["peak_bytes_in_use"])
        if backend == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]) if tf.config.list_physical_devices(
            "GPU") else None
    except (KeyError, RuntimeError, ValueError):
        return None


def accelerator_name() -> str:
    """The card's name as nvidia-smi gives it, else what the backend says its first device is."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        if out:
            return out.splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    return "cpu"


def measure_one(args: argparse.Namespace, precision: str, batch_size: int) -> dict:
    """One (precision, batch size): compile, warm up, time training and inference steps on one fixed batch."""
    import keras
    import numpy as np

    from train.config import load_config
    from train.model import build_model, compile_model

    config = load_config(args.config)
    size = (args.size, args.size) if args.size else config.image_size
    x, y = load_batch(args.tiles, batch_size, size, config)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.train.seed)
    model = build_model(config, size)
    compile_model(model, config)
    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)  # on the device, once

    start = time.perf_counter()
    first = model.train_on_batch(x, y, return_dict=True)  # traces and compiles
    compile_seconds = time.perf_counter() - start
    for _ in range(args.warmup):
        model.train_on_batch(x, y, return_dict=True)
    losses, rounds = [float(first["loss"])], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            logs = model.train_on_batch(x, y, return_dict=True)  # returns host floats: the step has finished
        rounds.append(time.perf_counter() - start)
        losses.append(float(logs["loss"]))
    step = statistics.median(rounds) / args.steps

    model.predict_on_batch(x)  # compiles the inference function
    predict_rounds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            np.asarray(model.predict_on_batch(x))
        predict_rounds.append(time.perf_counter() - start)
    predict_step = statistics.median(predict_rounds) / args.steps
    finite = bool(np.all(np.isfinite(losses)))
    peak = peak_device_bytes()
    return {
        "precision": precision, "batch_size": batch_size, "image_size": list(size),
        "parameters": int(model.count_params()),
        "train_images_per_s": batch_size / step, "train_step_ms": 1000 * step,
        "train_ms_per_image": 1000 * step / batch_size,
        "infer_images_per_s": batch_size / predict_step,
        "first_step_seconds": compile_seconds,
        "loss_first": losses[0], "loss_last": losses[-1],
        "learns": finite and losses[-1] < losses[0],
        "peak_device_gib": None if peak is None else peak / 2**30,
        "nucleus_dice_last": float(logs.get("nucleus_dice", float("nan"))),
    }


def child(args: argparse.Namespace, precision: str, batch_size: int) -> dict:
    """Runs measure_one in a fresh process: its own compile caches, peak memory and failure."""
    command = [sys.executable, __file__, "--one", f"{precision}:{batch_size}", "--config", str(args.config),
               "--tiles", str(args.tiles), "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--warmup", str(args.warmup)] + (["--size", str(args.size)] if args.size else [])
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return {"precision": precision, "batch_size": batch_size, "error": " | ".join(tail)[-400:]}
    row = json.loads(lines[-1])
    row["process_seconds"] = time.perf_counter() - started
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "edf_cervical.config")
    parser.add_argument("--tiles", type=Path, default=DEFAULT_TILES,
                        help="a folder with images/ and masks/ of same-named PNG tiles (default: ../shared real tiles)")
    parser.add_argument("--batch-sizes", default="8,2", help="comma-separated (2 is the reference config's)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--size", type=int, default=0, help="square input size (default: the config's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (the median round counts)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the compiling one")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed to each measurement")
    parser.add_argument("--out", type=Path, help="also append each row to this JSON-lines file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.tiles / "images").is_dir():
        raise SystemExit(f"bench-gpu: --tiles {args.tiles}: no images/ folder (pass a prepared tile folder)")
    if args.one:
        precision, batch_size = args.one.split(":")
        print(json.dumps(measure_one(args, precision, int(batch_size))))
        return

    import keras

    card = accelerator_name()
    print(f"bench-gpu: {card}; Keras {keras.__version__} on {keras.backend.backend()}; config {args.config}",
          flush=True)
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for precision in args.precisions.split(","):
            if precision not in PRECISIONS:
                raise SystemExit(f"bench-gpu: --precisions: {precision!r} is not one of {', '.join(PRECISIONS)}")
            row = child(args, precision, batch_size)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    print(f"\n{'precision':<16}{'batch':>6}{'train img/s':>13}{'ms/img':>9}{'infer img/s':>13}"
          f"{'peak GiB':>10}{'loss first→last':>20}")
    for row in rows:
        if "error" in row:
            print(f"{row['precision']:<16}{row['batch_size']:>6}  failed: {row['error'][:80]}")
            continue
        peak = "-" if row["peak_device_gib"] is None else f"{row['peak_device_gib']:.1f}"
        print(f"{row['precision']:<16}{row['batch_size']:>6}{row['train_images_per_s']:>13.1f}"
              f"{row['train_ms_per_image']:>9.1f}{row['infer_images_per_s']:>13.1f}{peak:>10}"
              f"{row['loss_first']:>10.4f}→{row['loss_last']:.4f}")
    print(json.dumps({"device": card, "backend": keras.backend.backend(), "keras": keras.__version__,
                      "config": str(args.config), "rows": rows}))


if __name__ == "__main__":
    main()
