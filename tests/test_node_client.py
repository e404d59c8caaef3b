"""A worker written in JavaScript (clients/node) trains with the Python services.

It reads the .proto files, pulls weights, fetches batches and computes the reference MLP's
gradient in plain JavaScript. The coordinator must accept its update, and the update must
equal the Python worker's for the same weights and batches: the wire format is
language-neutral.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedstream.common.clients import DataPoolClient
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.models import build_model
from fedstream.worker.compute import GradientComputer

from conftest import start_service

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed: the JavaScript participant cannot be tested here")


@pytest.fixture(scope="module")
def node_modules():
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True,
                   timeout=300)


def test_node_worker_gradient_is_accepted_and_equals_python(tmp_path, node_modules):
    clients = 10
    datapool, pool_address = start_service(tmp_path, "datapool", "--clients", str(clients))
    try:
        coordinator, address = start_service(
            tmp_path, "coordinator", "--datapool", pool_address, "--min-workers", "1",
            "--rounds", "1", "--metrics", str(tmp_path / "metrics.jsonl"))
        dump = tmp_path / "update.bin"
        node = subprocess.run(["node", str(NODE_DIR / "worker.js"), "--coordinator", address,
                               "--datapool", pool_address, "--dump-update", str(dump)],
                              capture_output=True, text=True, timeout=300)
        assert node.returncode == 0, node.stderr
        assert "accepted=true, now version 2" in node.stdout
        assert coordinator.wait(timeout=60) == 0
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1] and rows[0]["version"] == 2

        pool = DataPoolClient(pool_address)
        summary = pool.info()
        batches = pool.batches(list(range(clients)), 0, 32)
        pool.close()
    finally:
        datapool.terminate()
        datapool.wait(timeout=30)

    model = build_model("reference", seed=0)
    task = Federation(FederationConfig(units=1), model, summary.client_sizes).task
    computer = GradientComputer(task, "/CPU:0")
    computer.set_weights([v.numpy() for v in model.weights])
    python_update = computer.compute(batches).arrays
    node_flat = np.frombuffer(dump.read_bytes(), "<f4")
    offset = 0
    for spec, expected in zip(task.update_specs, python_update):
        got = node_flat[offset:offset + expected.size].reshape(expected.shape)
        offset += expected.size
        relative = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert relative < 1e-4, (spec.name, relative)
    assert offset == node_flat.size


def test_typescript_code_generates_from_the_proto_files(tmp_path, node_modules):
    """A second language's code from proto/ alone, with the command PROTOCOL.md gives."""
    done = subprocess.run(
        [str(NODE_DIR / "node_modules" / ".bin" / "proto-loader-gen-types"),
         "fedstream/v1/coordinator.proto", "fedstream/v1/datapool.proto",
         "--grpcLib=@grpc/grpc-js", f"--outDir={tmp_path}", "-I", str(NODE_DIR.parent.parent / "proto")],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    generated = {p.stem for p in (tmp_path / "fedstream" / "v1").glob("*.ts")}
    assert {"Coordinator", "DataPool", "SiteData", "EvaluationReport", "Task"} <= generated
    coordinator = (tmp_path / "fedstream" / "v1" / "Coordinator.ts").read_text()
    for rpc in ("Join", "GetAssignment", "PullWeights", "PushUpdate", "GetStatus", "Leave",
                "Evaluate", "ReportEvaluation"):
        assert f"{rpc}(" in coordinator, rpc


def test_node_encodings_are_byte_for_byte_pythons(tmp_path, node_modules):
    """float16 and bfloat16 encode to the same bytes in both languages (subnormals, overflow
    and ties included); int8 payloads from JavaScript decode in Python within one step."""
    from fedstream.common.codecs import Encoding, decode, encode
    from fedstream.common.tensors import TensorSpec
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=2000) * 10.0 ** rng.uniform(-9, 5, size=2000),
                        [0.0, -0.0, 65504, 70000, 1e-8, 6e-8, 2.9e-8, 3e-5]]).astype("<f4")
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    script = f"""
const w = require({str(NODE_DIR / 'worker.js')!r});
const fs = require('fs');
const b = fs.readFileSync({str(tmp_path / 'x.bin')!r});
const a = new Float32Array(b.buffer, b.byteOffset, b.length / 4);
for (const e of ['ENCODING_FLOAT16', 'ENCODING_BFLOAT16', 'ENCODING_INT8']) {{
  fs.writeFileSync({str(tmp_path)!r} + '/' + e, w.encodeUpdate(e, [a]));
}}"""
    subprocess.run(["node", "-e", script], check=True, cwd=NODE_DIR, timeout=60)
    spec = [TensorSpec("x", np.dtype("<f4"), x.shape)]
    for name, encoding in [("ENCODING_FLOAT16", Encoding.FLOAT16),
                           ("ENCODING_BFLOAT16", Encoding.BFLOAT16)]:
        assert (tmp_path / name).read_bytes() == encode(encoding, [x]), name
    (decoded,) = decode(Encoding.INT8, spec, (tmp_path / "ENCODING_INT8").read_bytes())
    assert np.abs(decoded - x).max() <= np.abs(x).max() / 127 * (1 + 1e-6)


def test_node_worker_sends_int8_to_a_compressing_coordinator(tmp_path, node_modules):
    datapool, pool_address = start_service(tmp_path, "datapool", "--clients", "10")
    try:
        coordinator, address = start_service(
            tmp_path, "coordinator", "--datapool", pool_address, "--min-workers", "1",
            "--rounds", "2", "--update-encoding", "int8", "--weights-encoding", "float16")
        node = subprocess.run(["node", str(NODE_DIR / "worker.js"), "--coordinator", address,
                               "--datapool", pool_address], capture_output=True, text=True,
                              timeout=300)
        assert node.returncode == 0, node.stderr
        parameters = 278_410
        sent = f"pushed {parameters + 4 * 6} bytes ENCODING_INT8, accepted=true"
        assert node.stdout.count(sent) == 2, node.stdout
        assert coordinator.wait(timeout=60) == 0
    finally:
        datapool.terminate()
        datapool.wait(timeout=30)
