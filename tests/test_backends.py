"""Keras backends: JAX and PyTorch workers compute the updates TensorFlow's do (and their
coordinators its server-optimizer steps), a process on another backend never loads
TensorFlow, and the backend is chosen before Keras loads.

Each backend runs in its own process (Keras reads its backend once): `backend_probe.py`
computes every case on JAX and on PyTorch, and the updates are compared with TensorFlow's
here. Tolerances are float32's (measured on this CPU: at most 2e-6 of the largest entry);
JAX on an NVIDIA GPU multiplies in TF32 by default, which these CPU checks do not see."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from fedstream.common import serde
from fedstream.common.backend import BackendError, use_backend
from fedstream.common.learning import evaluate
from fedstream.common.protocol import Batch
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.server_model import ServerModel
from fedstream.worker.computers import make_computer
from fedstream.worker.device import keras_device

from conftest import launch_service, rows, start_service, start_worker, stop, tiny_model, wait_for_round

PROBE = Path(__file__).with_name("backend_probe.py")
TOLERANCE = 1e-5  # of the largest entry of each tensor
OTHER_BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    importlib.util.find_spec(b) is None, reason=f"{b} is not installed (pip install "
                                                 f"'fedstream[{b}]')")) for b in ("jax", "torch")]


def tiny_cnn(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Reshape((28, 28, 1)),
                             keras.layers.Conv2D(3, 5, strides=2, activation="relu"),
                             keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation="softmax")], name="tiny_cnn")


def with_dropout(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                             keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.2),
                             keras.layers.Dense(10, activation="softmax")], name="dropout")


def task_for(model, *, update="gradient", per_client=False, **options):
    task = Federation(FederationConfig(update=update, units=1, **options), model, [16] * 4).task
    return dataclasses.replace(task, per_client=per_client)


def unit(sizes, seed):
    rng = np.random.default_rng(seed)
    return [Batch(10 + c, 0, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, n).astype(np.uint8)) for c, n in enumerate(sizes)]


local = dict(update="delta", local_epochs=2, local_batch_size=4, client_lr=0.05)
# Unequal clients whose step counts share one bucket: each local-training case is one
# compiled program per backend (torch.compile takes seconds for each). Several groups of
# clients are the backend-neutral `ClientsTogether`'s, tested in test_algorithms.py.
CASES = {  # name: (model, task options, client sizes)
    "fedsgd": (tiny_model, dict(weighting="examples", normalize=True), [5, 9, 16]),
    "fedsgd_per_client": (tiny_model, dict(per_client=True), [8, 8, 3]),
    "fedsgd_cnn": (tiny_cnn, dict(normalize=True), [6, 10]),
    "fedavg": (tiny_model, dict(local, weighting="examples", normalize=True), [9, 12, 11, 10]),
    "fedavg_momentum_prox": (tiny_model, dict(local, client_momentum=0.9, prox_mu=0.1,
                                              normalize=True), [12, 12, 10]),
    "fedavg_whole_client": (tiny_model, dict(local, local_batch_size=0, normalize=True),
                            [17, 18, 18]),
    "fedavg_per_client": (tiny_model, dict(local, per_client=True, normalize=True), [9, 11]),
    "fedavg_cnn": (tiny_cnn, dict(local, normalize=True), [9, 6]),
    "fedavg_dropout_layer": (with_dropout, dict(local, normalize=True), [8, 5]),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Every case written for the probe, TensorFlow's update and evaluation for it, and
    TensorFlow's weights after the server-optimizer steps."""
    folder = tmp_path_factory.mktemp("backends")
    expected = {}
    for i, (name, (make_model, options, sizes)) in enumerate(CASES.items()):
        model = make_model(seed=i)
        task = task_for(model, **options)
        batches = unit(sizes, seed=i)
        weights = [v.numpy() for v in model.weights]
        (folder / f"{name}.task").write_bytes(serde.task_to_proto(task).SerializeToString())
        np.savez(folder / f"{name}.weights.npz", **{f"w{k}": w for k, w in enumerate(weights)})
        np.savez(folder / f"{name}.batches.npz", clients=[b.client_id for b in batches],
                 **{f"x{k}": b.x for k, b in enumerate(batches)},
                 **{f"y{k}": b.y for k, b in enumerate(batches)})
        computer = make_computer(task, "/CPU:0")
        computer.set_weights(weights)
        expected[name] = (computer.compute(batches, round_number=3), evaluate(
            computer.model, np.concatenate([b.x for b in batches]),
            np.concatenate([b.y for b in batches]), loss=task.loss,
            num_classes=task.num_classes, input_divisor=task.input_divisor))
    (folder / "cases.json").write_text(json.dumps([{"name": n, "round": 3} for n in CASES]))
    return folder, expected, server_steps(folder)


SERVER_OPTIMIZERS = {"adam": dict(server_optimizer="adam", server_lr=0.01),
                     "yogi": dict(server_optimizer="yogi", server_lr=0.01),
                     "sgd_momentum": dict(server_optimizer="sgd", server_lr=0.5,
                                          server_momentum=0.9)}


def server_steps(folder: Path, steps: int = 3) -> dict[str, list[np.ndarray]]:
    """Three server-optimizer steps of each kind, for the probe; TensorFlow's weights after."""
    model = tiny_model(seed=30)
    rng = np.random.default_rng(30)
    arrays = [[rng.standard_normal(v.shape).astype(np.float32) for v in model.trainable_variables]
              for _ in range(steps)]
    start = [v.numpy() for v in model.weights]
    np.savez(folder / "server.weights.npz", **{f"w{i}": w for i, w in enumerate(start)})
    np.savez(folder / "server.steps.npz", **{f"s{k}_{i}": a for k, step in enumerate(arrays)
                                             for i, a in enumerate(step)})
    (folder / "server.json").write_text(json.dumps(
        {"model_json": model.to_json(), "optimizers": SERVER_OPTIMIZERS, "steps": steps}))
    after = {}
    for name, options in SERVER_OPTIMIZERS.items():
        model.set_weights(start)
        config = FederationConfig(**options)
        server = ServerModel(model, config.server, config.encodings)
        for step in arrays:
            server.apply(step)
        after[name] = server.trainable_arrays()
    return after


def run_probe(folder: Path, backend: str, *case: str, **env: str) -> dict:
    return run_probes(folder, backend, [(case, env)])[0]


def run_probes(folder: Path, backend: str, parts: list[tuple[tuple[str, ...], dict]]) -> list:
    """Probes of the cases of each part (with its environment), side by side."""
    procs = [subprocess.Popen([sys.executable, str(PROBE), str(folder), *cases],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "KERAS_BACKEND": backend, **env})
             for cases, env in parts]
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        reports.append({**json.loads(stdout.strip().splitlines()[-1]), "stderr": stderr})
    return reports


# torch.compile takes ~12 s a program on a cold CPU: two local-training cases check the
# compiled step, the others torch's same functions eagerly (TORCH_COMPILE_DISABLE), beside them
TORCH_COMPILED = ("fedavg_momentum_prox", "fedavg_per_client")


def probe_every_case(folder: Path, backend: str) -> dict:
    if backend != "torch":
        return run_probe(folder, backend)
    compiled = tuple(c for c in CASES if c in TORCH_COMPILED or "fedavg" not in c or "cnn" in c)
    eager = tuple(c for c in CASES if c not in compiled)
    report, eager_report = run_probes(folder, backend, [
        ((*compiled, "server"), {}), (eager, {"TORCH_COMPILE_DISABLE": "1"})])
    assert "run eagerly" not in eager_report["stderr"]
    return report


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_other_backends_compute_tensorflows_updates_and_losses_without_loading_it(cases,
                                                                                backend):
    folder, expected, server = cases
    report = probe_every_case(folder, backend)
    assert (report["backend"], report["tensorflow"]) == (backend, False)
    assert "run eagerly" not in report["stderr"]  # torch.compile compiled
    if report["device"] == "/CPU:0":  # a host without a GPU: asking for one says why not
        assert report["gpu_refused"] == f"--device /GPU:0: the {backend} backend sees 0 GPU(s)"
    else:
        assert (report["device"], report["gpu_refused"]) == ("/GPU:0", "")
    for name, want in server.items():
        got = np.load(folder / f"{backend}-server-{name}.npz")
        for k, w in enumerate(want):
            np.testing.assert_allclose(got[f"w{k}"], w, rtol=0, atol=TOLERANCE * np.abs(w).max(),
                                       err_msg=f"server optimizer {name}, tensor {k}")
    for name, (want, held_out) in expected.items():
        got = np.load(folder / f"{backend}-{name}.npz")
        assert float(got["eval_loss"]) == pytest.approx(held_out["test_loss"], rel=TOLERANCE)
        assert float(got["eval_acc"]) == held_out["test_acc"], name
        assert float(got["weight"]) == want.weight, name
        assert float(got["loss"]) == pytest.approx(want.loss, rel=TOLERANCE), name
        for k, w in enumerate(want.arrays):
            g = got[f"u{k}"]
            assert g.shape == w.shape, name
            np.testing.assert_allclose(g, w, rtol=0, atol=TOLERANCE * np.abs(w).max(),
                                       err_msg=f"{name}, tensor {k}")


def test_pytorch_trains_eagerly_where_torch_compile_cannot_compile(cases):
    """No C++ compiler for torch.compile's CPU code: a warning, and the same update."""
    pytest.importorskip("torch")
    folder, expected, _ = cases
    report = run_probe(folder, "torch", "fedavg", CXX="/nonexistent/c++")
    assert "torch.compile failed (InvalidCxxCompiler" in report["stderr"]
    assert "local training steps run eagerly" in report["stderr"]
    want, _ = expected["fedavg"]
    got = np.load(folder / "torch-fedavg.npz")
    for k, w in enumerate(want.arrays):
        np.testing.assert_allclose(got[f"u{k}"], w, rtol=0, atol=TOLERANCE * np.abs(w).max())


def test_a_dropout_task_trains_on_jax_and_draws_per_client_and_round(tmp_path):
    """Dropout on: JAX trains clients together, each drawing from (round, client); the
    same round twice gives the same deltas, another round other ones. Whole-client steps,
    so two clients of the same data differ by their draws alone."""
    pytest.importorskip("jax")
    model = with_dropout(seed=1)
    task = task_for(model, dropout=True, **dict(local, local_batch_size=0, per_client=True,
                                                normalize=True))
    batches = unit([8, 8], seed=5)
    batches[1] = dataclasses.replace(batches[1], x=batches[0].x, y=batches[0].y)  # same data
    for name in ("r3", "r3_again", "r4"):
        (tmp_path / f"{name}.task").write_bytes(serde.task_to_proto(task).SerializeToString())
        np.savez(tmp_path / f"{name}.weights.npz",
                 **{f"w{k}": v.numpy() for k, v in enumerate(model.weights)})
        np.savez(tmp_path / f"{name}.batches.npz", clients=[b.client_id for b in batches],
                 **{f"x{k}": b.x for k, b in enumerate(batches)},
                 **{f"y{k}": b.y for k, b in enumerate(batches)})
    (tmp_path / "cases.json").write_text(json.dumps(
        [{"name": "r3", "round": 3}, {"name": "r3_again", "round": 3}, {"name": "r4", "round": 4}]))
    run_probe(tmp_path, "jax")
    r3, again, r4 = (np.load(tmp_path / f"jax-{n}.npz")["u0"] for n in ("r3", "r3_again", "r4"))
    np.testing.assert_array_equal(r3, again)
    assert np.abs(r3[0] - r3[1]).max() > 0.01 * np.abs(r3).max()  # their own draws
    assert np.abs(r3 - r4).max() > 0.01 * np.abs(r3).max()


def test_the_backend_must_be_chosen_before_keras_loads():
    assert keras.backend.backend() == "tensorflow"  # this test process's
    assert use_backend("tensorflow") == "tensorflow"
    with pytest.raises(BackendError, match="imported with the tensorflow backend"):
        use_backend("jax")
    with pytest.raises(BackendError, match="unknown backend 'mxnet'"):
        use_backend("mxnet")


def test_a_missing_backend_says_how_to_install_it(tmp_path):
    """In a fresh process with the package hidden: the error names the extra to install."""
    hide = ("import sys, importlib.util as u; real = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'torch' else real(n, *a); "
            "from fedstream.common.backend import use_backend; use_backend('torch')")
    proc = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert 'pip install "fedstream[torch]"' in proc.stderr


def test_device_names_every_backend_accepts():
    assert keras_device("/CPU:0") == "cpu"
    assert keras_device("/GPU:1") == "gpu:1"


def test_tensorboard_refuses_a_process_on_another_backend(monkeypatch, tmp_path):
    from fedstream.coordinator.metrics import TensorBoardScalars
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(ValueError, match="leave it off"):
        TensorBoardScalars(str(tmp_path))


def loads_tensorflow(pid: int) -> bool:
    """Whether a live process has TensorFlow's library mapped: what it loaded, not what it
    says."""
    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.e2e
def test_workers_of_three_backends_train_one_federation_with_a_jax_coordinator(tmp_path):
    """A data pool, a coordinator on JAX and one worker per backend (PyTorch's when it is
    installed), as separate processes on loopback: FedAvg 2NN on real MNIST. Every worker
    contributes, the model learns, and no process but the TensorFlow worker loads
    TensorFlow."""
    pytest.importorskip("jax")
    backends = ["tensorflow", "jax"] + (["torch"] if importlib.util.find_spec("torch") else [])
    metrics = tmp_path / "metrics.jsonl"
    datapool, pool = start_service(tmp_path, "datapool", "--partitioner", "iid")
    coordinator, address = launch_service(
        tmp_path, "coordinator", "--datapool", pool, "--backend", "jax", "--threads", "1",
        "--min-workers", str(len(backends)), "--units", str(len(backends)), "--model", "2nn",
        "--update", "delta", "--local-epochs", "1", "--local-batch-size", "10",
        "--client-fraction", "0.1", "--client-lr", "0.1", "--server-optimizer", "sgd",
        "--server-lr", "1", "--normalize", "--rounds", "4", "--metrics", str(metrics))
    # the torch worker steps eagerly: its compiled step is the probe's test, ~20 s cold
    workers = {b: start_worker(tmp_path, address, pool, f"worker-{b}", "--backend", b,
                               **({"TORCH_COMPILE_DISABLE": "1"} if b == "torch" else {}))
               for b in backends}
    try:
        wait_for_round(metrics, 1, [datapool, coordinator, *workers.values()], timeout_s=240)
        assert not loads_tensorflow(coordinator.pid)
        assert [loads_tensorflow(w.pid) for w in workers.values()] == [
            b == "tensorflow" for b in backends]
        assert coordinator.wait(timeout=240) == 0
        for w in workers.values():
            assert w.wait(timeout=60) == 0
    finally:
        stop(*workers.values(), coordinator, datapool)
    for b in backends:
        log = (tmp_path / f"worker-{b}.log").read_text()
        assert f"with Keras' {b} backend" in log
        units = int(re.search(r"stopped after (\d+) units", log).group(1))
        assert units >= 1, b
    last = rows(metrics)[-1]
    assert last["round"] == 4 and last["updates_rejected"] == 0
    assert last["test_acc"] > 0.85


def test_a_jax_coordinator_resumes_a_tensorflow_checkpoint(tmp_path):
    """Checkpoints hold plain arrays: a federation checkpointed on TensorFlow at round 3
    goes on to round 5 on JAX (in its own process) and ends where the uninterrupted
    TensorFlow one does, within float32's tolerance."""
    pytest.importorskip("jax")
    from test_checkpoint import CONFIG, train
    straight = Federation(CONFIG, tiny_model(), [10] * 6)
    train(straight, 5)
    first = Federation(CONFIG, tiny_model(), [10] * 6, checkpoint_dir=str(tmp_path))
    train(first, 3)
    resume = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from fedstream.common.backend import use_backend\n"
        "use_backend('jax')\n"
        "import numpy as np\n"
        "from conftest import tiny_model\n"
        "from fedstream.coordinator.federation import Federation\n"
        "from test_checkpoint import CONFIG, train\n"
        f"fed = Federation(CONFIG, tiny_model(seed=99), [10] * 6, checkpoint_dir={str(tmp_path)!r})\n"
        "assert (fed.round, fed.server.version) == (3, 4), (fed.round, fed.server.version)\n"
        "train(fed, 5)\n"
        "assert fed.phase == 'done' and fed.server.version == 6\n"
        f"np.savez({str(tmp_path / 'resumed.npz')!r}, *[v.numpy() for v in fed.server.model.weights])\n"
        "print('tensorflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", resume], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    resumed = np.load(tmp_path / "resumed.npz")
    for k, v in enumerate(straight.server.model.weights):
        want = v.numpy()
        np.testing.assert_allclose(resumed[f"arr_{k}"], want, rtol=0,
                                   atol=TOLERANCE * np.abs(want).max())
