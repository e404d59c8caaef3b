"""Run as `python backend_probe.py FOLDER [CASE...]` with KERAS_BACKEND set: computes, on that
backend, the update of every case in FOLDER/cases.json (or of the cases named; `server` names
the server steps) (a task as its wire message, the weights, the unit's batches) with the
worker's own `make_computer`, and the model's evaluation on those examples, and writes
FOLDER/<backend>-<case>.npz; the coordinator's server optimizer steps of FOLDER/server.json;
then the device it picks on this host.
`test_backends.py` compares them with TensorFlow's. Prints which heavy modules it loaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fedstream.common.backend import use_backend


def main(folder: Path, *only: str) -> None:
    backend = use_backend()
    from fedstream.common import serde
    from fedstream.common.learning import evaluate
    from fedstream.common.protocol import Batch
    from fedstream.v1 import coordinator_pb2
    from fedstream.worker.computers import make_computer

    for case in json.loads((folder / "cases.json").read_text()):
        name = case["name"]
        if only and name not in only:
            continue
        task = serde.task_from_proto(coordinator_pb2.Task.FromString(
            (folder / f"{name}.task").read_bytes()))
        weights = np.load(folder / f"{name}.weights.npz")
        data = np.load(folder / f"{name}.batches.npz")
        batches = [Batch(int(c), 0, data[f"x{i}"], data[f"y{i}"])
                   for i, c in enumerate(data["clients"])]
        computer = make_computer(task, "/CPU:0")
        computer.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
        update = computer.compute(batches, round_number=case["round"])
        held_out = evaluate(computer.model, np.concatenate([b.x for b in batches]),
                            np.concatenate([b.y for b in batches]), loss=task.loss,
                            num_classes=task.num_classes, input_divisor=task.input_divisor)
        np.savez(folder / f"{backend}-{name}.npz", loss=update.loss, weight=update.weight,
                 eval_loss=held_out["test_loss"], eval_acc=held_out["test_acc"],
                 **{f"u{i}": a for i, a in enumerate(update.arrays)})
    if (folder / "server.json").exists() and (not only or "server" in only):
        server_steps(folder, backend)
    from fedstream.worker.device import select_device
    try:
        select_device("/GPU:0")
        refused = ""
    except ValueError as e:
        refused = str(e)
    print(json.dumps({"backend": backend, "tensorflow": "tensorflow" in sys.modules,
                      "device": select_device(None), "gpu_refused": refused}))


def server_steps(folder: Path, backend: str) -> None:
    """The coordinator's server optimizer, three steps of each kind in FOLDER/server.json."""
    from fedstream.common.learning import model_from_json
    from fedstream.coordinator.config import FederationConfig
    from fedstream.coordinator.server_model import ServerModel

    spec = json.loads((folder / "server.json").read_text())
    start = np.load(folder / "server.weights.npz")
    steps = np.load(folder / "server.steps.npz")
    for name, options in spec["optimizers"].items():
        model = model_from_json(spec["model_json"])
        model.set_weights([start[f"w{i}"] for i in range(len(start.files))])
        config = FederationConfig(**options)
        server = ServerModel(model, config.server, config.encodings)
        for k in range(spec["steps"]):
            server.apply([steps[f"s{k}_{i}"] for i in range(len(server.trainable))])
        np.savez(folder / f"{backend}-server-{name}.npz",
                 **{f"w{i}": a for i, a in enumerate(server.trainable_arrays())})


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
