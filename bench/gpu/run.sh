#!/usr/bin/env bash
# Run on the GPU host, in the repository, after bench/gpu/prepare.sh here carried .whl/ there:
# installs the carried wheels beside the host's JAX and PyTorch (no TensorFlow), then times the
# reference recipe and FedAvg 2NN and CNN with workers on the GPU, `simulate` and a distributed
# run (data pool, coordinator, 2 workers on loopback) per backend. JAX multiplies float32 in
# TF32 on NVIDIA GPUs by default; the figures are taken at that default.
set -euo pipefail
out=${OUT:-bench/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr 'A-Z' 'a-z')
python3 bench/backends.py --backends jax,torch --device /GPU:0 --data .whl/mnist.npz \
  --worker-threads 2 --out "$out/gpu-${card:-unknown}.json"
