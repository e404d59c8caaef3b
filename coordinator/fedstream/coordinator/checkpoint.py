"""Coordinator checkpoints: everything a restarted coordinator needs to continue exactly.

One `checkpoint.npz` per folder, replaced atomically after every round: the model's weights,
the server optimizer's variables (Adam's step count and moments), and a JSON header with the
last completed round, the version, the model's Keras JSON, the federation config and the mode's
own counters (asynchronous modes: the next unit number, so sampling goes on). Arrays
are stored without pickles and loaded with `allow_pickle=False`: never change that.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FILE_NAME = "checkpoint.npz"


@dataclass(frozen=True)
class Checkpoint:
    round: int  # the last completed round
    version: int
    model_json: str
    config: dict
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    state: dict = field(default_factory=dict)  # the mode's own JSON-able counters


def save(directory: str | Path, ckpt: Checkpoint) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"round": ckpt.round, "version": ckpt.version,
                         "model_json": ckpt.model_json, "config": ckpt.config,
                         "state": ckpt.state})
    arrays = {"header": np.frombuffer(header.encode(), np.uint8)}
    arrays.update({f"weight_{i:04d}": w for i, w in enumerate(ckpt.weights)})
    arrays.update({f"optimizer_{i:04d}": v for i, v in enumerate(ckpt.optimizer)})
    final = directory / FILE_NAME
    partial = directory / f".{FILE_NAME}.partial"
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, final)  # readers see the old or the new checkpoint, never half of one
    return final


def load(directory: str | Path) -> Checkpoint | None:
    path = Path(directory) / FILE_NAME
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(bytes(data["header"]).decode())
        weights = [data[k] for k in sorted(k for k in data.files if k.startswith("weight_"))]
        optimizer = [data[k] for k in sorted(k for k in data.files if k.startswith("optimizer_"))]
    return Checkpoint(round=header["round"], version=header["version"],
                      model_json=header["model_json"], config=header["config"],
                      weights=weights, optimizer=optimizer, state=header.get("state", {}))
