"""A site's own labelled data: any `.npz` of named feature and label arrays, of any example
shape and dtype (MNIST is the embedded default; see `mnist`). Loaded without pickles and
checked, so a malformed file is refused with what is wrong rather than served."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedstream.datapool.mnist import DatasetError, load_mnist


@dataclass(frozen=True)
class LabelledData:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    client_ids: np.ndarray | None = None  # each training example's own client, if the data says


@dataclass(frozen=True)
class ArrayKeys:
    """The names of the four arrays in an `.npz`."""
    x_train: str = "x_train"
    y_train: str = "y_train"
    x_test: str = "x_test"
    y_test: str = "y_test"


def load_arrays(path: str | Path, keys: ArrayKeys = ArrayKeys(),
                num_classes: int = 0) -> LabelledData:
    """The four arrays of `path`; labels must be integers in [0, num_classes) (0: one more
    than the largest label seen)."""
    path = Path(path)
    wanted = {"x_train": keys.x_train, "y_train": keys.y_train, "x_test": keys.x_test,
              "y_test": keys.y_test}
    try:
        with np.load(path, allow_pickle=False) as d:  # never a pickle from a data file
            missing = [k for k in wanted.values() if k not in d.files]
            if missing:
                raise DatasetError(f"{path} lacks the arrays {missing} (it holds {d.files}): "
                                   "name the feature and label arrays with --x-key, --y-key, "
                                   "--x-test-key, --y-test-key")
            arrays = {field: np.asarray(d[key]) for field, key in wanted.items()}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path} is not a readable .npz without pickles: {e}") from e
    return check_labelled(path.stem, num_classes, **arrays)


def check_labelled(name: str, num_classes: int, **arrays: np.ndarray) -> LabelledData:
    problems = []
    x, y, xt, yt = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    for split, (xs, ys) in {"train": (x, y), "test": (xt, yt)}.items():
        if ys.ndim != 1 or not np.issubdtype(ys.dtype, np.integer):
            problems.append(f"{split} labels must be a 1-D integer array, got {ys.dtype}"
                            f"{list(ys.shape)}")
        elif len(xs) != len(ys):
            problems.append(f"{len(xs)} {split} examples but {len(ys)} labels")
    if x.shape[1:] != xt.shape[1:] or x.dtype != xt.dtype:
        problems.append(f"train examples {x.dtype}{list(x.shape[1:])} and test examples "
                        f"{xt.dtype}{list(xt.shape[1:])} differ")
    if not len(x):
        problems.append("no training examples")
    if x.dtype.kind not in "biuf":
        problems.append(f"examples of dtype {x.dtype}: numbers or booleans only")
    if problems:
        raise DatasetError(f"data set {name!r}: " + "; ".join(problems))
    top = int(max(y.max(initial=0), yt.max(initial=0)))
    classes = num_classes or top + 1
    if min(y.min(initial=0), yt.min(initial=0)) < 0 or top >= classes:
        raise DatasetError(f"data set {name!r}: labels must lie in [0, {classes}); found "
                           f"{int(min(y.min(initial=0), yt.min(initial=0)))}..{top}")
    x, y, xt, yt = (a.astype(a.dtype.newbyteorder("<"), copy=False) for a in (x, y, xt, yt))
    return LabelledData(name, x, y, xt, yt, classes)


def load_mnist_data(path: str | None) -> LabelledData:
    m = load_mnist(path)
    return LabelledData("mnist", m.x_train, m.y_train, m.x_test, m.y_test, 10)
