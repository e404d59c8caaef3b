"""A site's data as Parquet or Arrow: feature, label and client-id columns, the natural
partition they define, and malformed tables refused with what is wrong."""

import numpy as np
import pytest

from fedstream.datapool.mnist import DatasetError
from fedstream.datapool.server import DataConfig, DataFormat, build_store

pa = pytest.importorskip("pyarrow", reason="the table format needs pyarrow (fedstream[table])")
import pyarrow.feather as feather  # noqa: E402
import pyarrow.parquet as parquet  # noqa: E402


def write(path, x, y, clients=None):
    columns = {"pixels": pa.array(list(x.reshape(len(x), -1)), pa.list_(pa.from_numpy_dtype(x.dtype))),
               "digit": pa.array(y)}
    if clients is not None:
        columns["writer"] = pa.array(clients)
    table = pa.table(columns)
    if str(path).endswith(".arrow"):
        feather.write_feather(table, path)
    else:
        parquet.write_table(table, path)


def config(tmp_path, train="train.parquet", **over):
    fields = dict(data=str(tmp_path / train), test_data=str(tmp_path / "test.parquet"),
                  data_format=DataFormat.TABLE, feature_column="pixels", label_column="digit",
                  example_shape="4,3", num_classes=5, clients=3, partitioner="iid")
    fields.update(over)
    return DataConfig(**fields)


@pytest.fixture
def tables(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 5, 60)
    writers = np.repeat([7, 3, 9, 3], 15)  # writer 3 holds 30 examples
    write(tmp_path / "train.parquet", x, y, writers)
    write(tmp_path / "train.arrow", x, y, writers)
    write(tmp_path / "test.parquet", x[:10], y[:10])
    return x, y, writers


@pytest.mark.parametrize("train", ["train.parquet", "train.arrow"])
def test_a_table_loads_into_a_partitioned_store(tmp_path, tables, train):
    x, y, _ = tables
    store = build_store(config(tmp_path, train), site="clinic")
    s = store.summary
    assert s.example_shape == (4, 3) and s.example_dtype == np.uint8 and s.num_classes == 5
    assert s.num_clients == 3 and sum(s.client_sizes) == 60 and s.num_test == 10
    rows = np.concatenate([store.client(c)[0] for c in range(3)])
    assert sorted(map(bytes, rows)) == sorted(map(bytes, x))


def test_the_client_column_defines_the_natural_partition(tmp_path, tables):
    x, y, writers = tables
    store = build_store(config(tmp_path, client_column="writer", partitioner="natural"))
    assert store.summary.partitioner == "natural" and store.summary.client_sizes == (30, 15, 15)
    np.testing.assert_array_equal(store.client(0)[0], x[writers == 3])  # ids sorted: 3, 7, 9
    np.testing.assert_array_equal(store.client(2)[1], y[writers == 9])


@pytest.mark.parametrize("over, message", [
    (dict(feature_column="image"), "has no column 'image'"),
    (dict(example_shape="5,5"), r"cannot take the shape \[5, 5\]"),
    (dict(test_data=None), "needs its held-out examples"),
    (dict(partitioner="natural"), "natural partition needs --client-column"),
])
def test_a_malformed_table_is_refused_with_what_is_wrong(tmp_path, tables, over, message):
    with pytest.raises((DatasetError, ValueError), match=message):
        build_store(config(tmp_path, **over))
