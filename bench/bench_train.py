"""Training benchmarks: is the tf.data pipeline the bottleneck (streamed tiles vs the same batches held in
memory, demo_cpu config, side by side in one run), demo_cpu images/s, the bench model's training step at float32
and at bfloat16 side by side (what `mixed_precision = auto` decides by), and the reference config's
forward+backward seconds per 512² image on this CPU. The last line printed is one JSON object.

``--smoke``: the same code paths at toy sizes (2 steps, 2 rounds, the reference config shrunk to 64² and 3 levels),
so `make test` can check that the bench still runs; its figures mean nothing."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from prep.cli import cli as prep_cli  # noqa: E402
from train.config import load_config  # noqa: E402
from train.data import (  # noqa: E402
    list_pairs,
    make_dataset,
    training_dataset_options,  # noqa: E402
)
from train.model import build_model, compile_model  # noqa: E402

SMOKE = "--smoke" in sys.argv[1:]
STEPS = 2 if SMOKE else 20
ROUNDS = 2 if SMOKE else 9
# The reference model shrunk for --smoke: the same build, compile and train_on_batch, a thousandth of the work.
SMOKE_REFERENCE = ["model.image_width=64", "model.image_height=64", "model.num_layers=3", "model.base_filters=4"]


def tile_dataset(root: Path) -> Path:
    """A small prepared dataset from the synthetic sample (4 images, default augmentations)."""
    runner = CliRunner()
    size = ["--size", "512"] if SMOKE else []
    result = runner.invoke(prep_cli, ["synth", "--output", str(root / "EDF"), "--count", "4", *size, "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(prep_cli, ["run", "--input", str(root / "EDF"), "--output", str(root / "tiles"),
                                      "--split", "0.5,0.25,0.25", "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "tiles"


def timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of calling ``work()``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - start, time.process_time() - start_cpu


def timed_steps(model, batches, steps: int) -> tuple[float, float]:
    """timed() of ``steps`` training steps on a live iterator.

    Keras' own train function on one iterator per input path, kept across rounds, as `fit` keeps one across
    epochs with steps_per_epoch: a `fit` call per round would restart the pipeline (refill its shuffle buffer,
    restart its threads) every round, a cost training pays once.
    """
    def run() -> None:
        for _ in range(steps):
            outputs = model.train_function(batches)
        logs = outputs if isinstance(outputs, dict) else outputs.get_value()
        float(logs["loss"])  # waits for the last step

    return timed(run)


def pipeline_vs_memory(tiles: Path) -> dict:
    config = load_config(REPO / "configs" / "demo_cpu.config")
    t = config.train
    images, masks = list_pairs(tiles / "train" / "images", tiles / "train" / "masks")
    streamed = make_dataset(images, masks, **{**training_dataset_options(config), "repeat": True})
    held = list(streamed.take(STEPS))  # the very tensors the pipeline makes, now in memory
    in_memory = tf.data.Dataset.from_tensor_slices((tf.stack([x for x, _ in held]), tf.stack([y for _, y in held])))
    in_memory = in_memory.repeat()
    keras.utils.set_random_seed(t.seed)
    model = build_model(config, (None, None))
    compile_model(model, config)
    model.make_train_function()
    memory_batches, streamed_batches = iter(in_memory), iter(streamed)
    timed_steps(model, memory_batches, 5)  # trace and warm up both input paths
    timed_steps(model, streamed_batches, 5)
    streamed_s, memory_s, streamed_cpu, memory_cpu = [], [], [], []
    for _ in range(ROUNDS):  # interleaved, so machine noise hits both alike
        for seconds, cpu, batches in ((memory_s, memory_cpu, memory_batches),
                                      (streamed_s, streamed_cpu, streamed_batches)):
            wall, used = timed_steps(model, batches, STEPS)
            seconds.append(wall)
            cpu.append(used)
    # The pipeline alone, no model: how fast it makes batches, and what it costs in CPU per batch.
    def next_batches() -> None:
        for _ in range(STEPS):
            next(streamed_batches)

    alone_s, alone_cpu = zip(*(timed(next_batches) for _ in range(ROUNDS)), strict=True)
    # The least-disturbed round of each: on a shared machine a round is sometimes twice as slow for reasons
    # outside the process, which a median over few rounds does not remove (medians are reported too).
    streamed_step = min(streamed_s) / STEPS
    memory_step = min(memory_s) / STEPS
    return {"demo_streamed_step_ms": 1000 * streamed_step, "demo_in_memory_step_ms": 1000 * memory_step,
            "streamed_vs_memory": streamed_step / memory_step,
            "streamed_vs_memory_median": statistics.median(streamed_s) / statistics.median(memory_s),
            "streamed_vs_memory_per_round": [s / m for s, m in zip(streamed_s, memory_s, strict=True)],
            # CPU seconds per step (the process, all threads): what the pipeline adds to the work, which other
            # tenants of a shared machine disturb far less than wall time.
            "streamed_vs_memory_cpu": statistics.median(streamed_cpu) / statistics.median(memory_cpu),
            "demo_streamed_cpu_ms": 1000 * statistics.median(streamed_cpu) / STEPS,
            "demo_in_memory_cpu_ms": 1000 * statistics.median(memory_cpu) / STEPS,
            # The pipeline makes batches this many times faster than the model (in memory) consumes them.
            "pipeline_alone_ms": 1000 * statistics.median(alone_s) / STEPS,
            "pipeline_alone_cpu_ms": 1000 * statistics.median(alone_cpu) / STEPS,
            "pipeline_headroom": statistics.median(memory_s) / statistics.median(alone_s),
            "demo_images_per_s": t.batch_size / streamed_step, "demo_batch": t.batch_size,
            "demo_crop": list(t.crop_size or config.image_size), "demo_crops_per_tile": t.crops_per_tile,
            "demo_params": model.count_params()}


def rounded(value):
    """Floats to 4 decimals, also inside lists (the JSON line stays readable)."""
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


def reference_step() -> dict:
    reference = REPO.parent / "shared" / "data" / "reference-config" / "train_eval_infer.config"
    config = load_config(reference if reference.is_file() else REPO / "configs" / "edf_cervical.config",
                         SMOKE_REFERENCE if SMOKE else [])
    model = build_model(config)
    compile_model(model, config)
    batch = config.train.batch_size
    height, width = config.image_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, height, width, config.model.image_channels)).astype(np.float32)
    labels = keras.utils.to_categorical(rng.uniform(0, 1, (batch, height, width)) > 0.98, 2).astype(np.float32)
    model.train_on_batch(images, labels)  # trace
    times = [timed(lambda: model.train_on_batch(images, labels))[0] for _ in range(2)]
    return {"reference_params": model.count_params(), "reference_batch": batch,
            "reference_cpu_s_per_image": statistics.median(times) / batch}


def precision_steps() -> dict:
    """The bench model's (bench_cpu.config) training step at float32 and at mixed_bfloat16, interleaved rounds in one
    process, and what [train] mixed_precision = auto picks on this CPU: bfloat16 pays only where it is native."""
    from train.fit import precision_policy

    config = load_config(REPO / "configs" / "bench_cpu.config")
    t = config.train
    crop = (32, 32) if SMOKE else (t.crop_size or config.image_size)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (t.batch_size, *crop, config.model.image_channels)).astype(np.float32)
    labels = keras.utils.to_categorical(rng.uniform(0, 1, (t.batch_size, *crop)) > 0.98, 2).astype(np.float32)
    models = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(t.seed)
            models[policy] = build_model(config, (None, None))
            compile_model(models[policy], config)
            models[policy].train_on_batch(images, labels)  # trace
        finally:
            keras.mixed_precision.set_global_policy("float32")
    seconds = {policy: [] for policy in models}
    for _ in range(2 if SMOKE else 5):  # interleaved, so machine noise hits both alike
        for policy, model in models.items():
            seconds[policy].append(timed(lambda model=model: model.train_on_batch(images, labels))[0])
    step = {policy: statistics.median(times) for policy, times in seconds.items()}
    return {"bench_float32_step_ms": 1000 * step["float32"], "bench_bfloat16_step_ms": 1000 * step["mixed_bfloat16"],
            "bench_bfloat16_vs_float32": step["mixed_bfloat16"] / step["float32"],
            "bench_step_batch": t.batch_size, "bench_step_crop": list(crop),
            "auto_precision_here": precision_policy("auto")}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        figures = pipeline_vs_memory(tile_dataset(Path(tmp)))
    print(f"demo_cpu ({figures['demo_params']:,} parameters, batch {figures['demo_batch']} of "
          f"{figures['demo_crop'][0]}² crops): streamed {figures['demo_streamed_step_ms']:.0f} ms/step, same "
          f"batches in memory {figures['demo_in_memory_step_ms']:.0f} ms/step → {figures['streamed_vs_memory']:.3f}× "
          f"(best of {ROUNDS} rounds each; medians {figures['streamed_vs_memory_median']:.3f}×);"
          f" {figures['demo_images_per_s']:.1f} images/s")
    print(f"CPU time per step (median of {ROUNDS} rounds): streamed {figures['demo_streamed_cpu_ms']:.0f} ms, "
          f"in memory {figures['demo_in_memory_cpu_ms']:.0f} ms → {figures['streamed_vs_memory_cpu']:.3f}×")
    print(f"the pipeline alone (no model): {figures['pipeline_alone_ms']:.1f} ms and "
          f"{figures['pipeline_alone_cpu_ms']:.1f} ms of CPU per batch, {figures['pipeline_headroom']:.1f}× faster "
          f"than the model consumes batches")
    figures.update(precision_steps())
    print(f"bench_cpu model, batch {figures['bench_step_batch']} of {figures['bench_step_crop'][0]}² crops: float32 "
          f"{figures['bench_float32_step_ms']:.0f} ms/step, mixed_bfloat16 {figures['bench_bfloat16_step_ms']:.0f} "
          f"ms/step ({figures['bench_bfloat16_vs_float32']:.2f}×); mixed_precision = auto picks "
          f"{figures['auto_precision_here']} on this CPU")
    figures.update(reference_step())
    print(f"reference config ({figures['reference_params']:,} parameters): forward+backward "
          f"{figures['reference_cpu_s_per_image']:.2f} s per 512² image on {os.cpu_count()} CPU cores")
    gpus = tf.config.list_physical_devices("GPU")
    figures["gpu"] = gpus[0].name if gpus else None
    if not gpus:
        print("no GPU here: `make bench-gpu` measures the reference config with mixed precision on and off")
    figures["cpu_count"] = os.cpu_count()
    print(json.dumps({key: rounded(value) for key, value in figures.items()}))


if __name__ == "__main__":
    main()
