"""A site's data as a columnar file, Parquet or Arrow IPC (Feather), read through pyarrow
(`pip install "fedstream[table]"`): a feature column (numbers, or fixed- or variable-size
lists of numbers, one example per row), an integer label column, and optionally a client-id
column whose values define the natural partition (`--partitioner natural`: one client per
distinct id, e.g. a writer or a patient). The held-out examples are a second file with the
same columns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedstream.datapool.arrays import LabelledData, check_labelled
from fedstream.datapool.mnist import DatasetError


@dataclass(frozen=True)
class TableColumns:
    features: str = "features"
    label: str = "label"
    client: str = ""  # empty: no natural partition
    example_shape: tuple[int, ...] = ()  # reshape each row's features (empty: as stored)


def _read(path: Path):
    try:
        import pyarrow.feather as feather
        import pyarrow.parquet as parquet
    except ImportError as e:
        raise DatasetError("reading Parquet or Arrow files needs pyarrow: "
                           "pip install \"fedstream[table]\"") from e
    try:
        if path.suffix in (".arrow", ".feather", ".ipc"):
            return feather.read_table(path)
        return parquet.read_table(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a readable Parquet or Arrow file: {e}") from e


def _column(table, name: str, path: Path) -> np.ndarray:
    if name not in table.column_names:
        raise DatasetError(f"{path} has no column {name!r} (it has {table.column_names}): name "
                           "the columns with --feature-column, --label-column, --client-column")
    column = table.column(name).combine_chunks()
    try:
        if hasattr(column, "flatten") and hasattr(column, "value_lengths"):  # list columns
            lengths = np.asarray(column.value_lengths())
            if len(lengths) and (lengths != lengths[0]).any():
                raise DatasetError(f"{path}: column {name!r} holds examples of different "
                                   f"lengths ({lengths.min()}..{lengths.max()})")
            values = np.asarray(column.flatten())
            return values.reshape(len(column), -1) if len(column) else values.reshape(0, 0)
        return np.asarray(column)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: column {name!r} is not numeric: {e}") from e


def _examples(path: Path, columns: TableColumns,
              clients: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    table = _read(path)
    x = _column(table, columns.features, path)
    if columns.example_shape:
        per_example = int(np.prod(columns.example_shape))
        if x.size != len(x) * per_example:
            raise DatasetError(f"{path}: examples of {x.size // max(1, len(x))} values cannot "
                               f"take the shape {list(columns.example_shape)}")
        x = x.reshape(len(x), *columns.example_shape)
    y = _column(table, columns.label, path)
    return x, y, _column(table, columns.client, path) if clients and columns.client else None


def load_table(path: str | Path, test_path: str | Path | None, columns: TableColumns,
               num_classes: int = 0) -> LabelledData:
    """Training examples from `path`, held-out ones from `test_path`; with a client column,
    each training example's client id in `client_ids`."""
    if test_path is None:
        raise DatasetError("a table data set needs its held-out examples: --test-data FILE "
                           "with the same columns")
    path, test_path = Path(path), Path(test_path)
    x, y, clients = _examples(path, columns, clients=True)
    xt, yt, _ = _examples(test_path, columns, clients=False)
    data = check_labelled(path.stem, num_classes, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return dataclasses.replace(data, client_ids=clients)
