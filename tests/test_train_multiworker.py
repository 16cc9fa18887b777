"""`[train] strategy = multiworker` for real: two worker processes on 127.0.0.1 with TF_CONFIG train a few steps on
the CPU together and end with the same weights (each sees its own shard of the batches, so only a working
all-reduce makes them equal)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from tests.conftest import REPO
from tests.test_train_fit import make_run


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def weights(path: Path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(path) as handle:
        handle.visititems(lambda name, item: found.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return found


def test_two_workers_train_together_and_end_with_the_same_weights(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset, epochs=2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        command = [sys.executable, "-m", "train", "fit", "--config", str(config), "--set", "train.strategy=multiworker",
                   "--set", f"train.model_dir=./worker{index}/models", "--set", f"train.eval_dir=./worker{index}/eval",
                   "--set", f"train.epoch_change_infer_dir=./worker{index}/montages",
                   "--set", "train.steps_per_epoch=2", "--set", "train.validation_steps=1"]
        workers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
        assert "on 2 replica(s)" in out  # one replica per worker, in one cluster
    first, second = (weights(tmp_path / f"worker{index}" / "models" / "best.weights.h5") for index in range(2))
    assert sorted(first) == sorted(second) and first
    assert all(np.array_equal(first[name], second[name]) for name in first)
    assert any(np.any(value != 0) for value in first.values())
