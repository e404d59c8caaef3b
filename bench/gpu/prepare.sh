#!/usr/bin/env bash
# Run here, in the repository: gathers into .whl/ (ignored by git) what a GPU host with JAX and
# PyTorch but no TensorFlow and no network needs for bench/backends.py: fedstream's own wheel,
# the packages such a host lacks, built for its Python 3.12 (Keras and its small needs, gRPC's
# health and reflection services, and gRPC and protobuf at the versions the stubs were made
# with), and MNIST from this machine's cache, compressed. bench/gpu/run.sh runs there.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}  # one with fedstream installed, for the MNIST cache
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
"$python" -m pip wheel -q --no-deps -w .whl .
platforms=()
for n in 2_28 2_27 2_17 2014 1; do platforms+=(--platform "manylinux${n/#2_/_2_}_x86_64"); done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  keras==3.15.1 namex==0.1.0 optree==0.20.0 grpcio==1.85.3 grpcio-health-checking==1.85.1 \
  grpcio-reflection==1.85.1 protobuf==7.36.2
"$python" - <<'PY'
import numpy as np
from fedstream.datapool.mnist import load_mnist
m = load_mnist()
np.savez_compressed(".whl/mnist.npz", x_train=m.x_train, y_train=m.y_train, x_test=m.x_test,
                    y_test=m.y_test)
PY
du -sh .whl
