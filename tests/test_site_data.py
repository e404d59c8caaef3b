"""A site's own data: any labelled .npz loaded and checked, and one data set split into
per-site files that cover it exactly once."""

import numpy as np
import pytest

from fedstream.datapool.arrays import ArrayKeys, LabelledData, load_arrays
from fedstream.datapool.mnist import DatasetError
from fedstream.datapool.partition import Partitioner
from fedstream.datapool.server import DataConfig, DataFormat, build_store
from fedstream.datapool.sites import SiteSplitConfig, split_by_group, split_sites, write_sites


def labelled(n=200, shape=(4, 3), dtype=np.float32, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return LabelledData("toy", rng.normal(size=(n, *shape)).astype(dtype),
                        rng.integers(0, classes, n), rng.normal(size=(n // 4, *shape)).astype(dtype),
                        rng.integers(0, classes, n // 4), classes)


def test_any_shape_and_dtype_loads_with_named_arrays(tmp_path):
    d = labelled(shape=(7,), dtype=np.float64)
    np.savez(tmp_path / "mine.npz", feats=d.x_train, labels=d.y_train, tf=d.x_test, tl=d.y_test)
    got = load_arrays(tmp_path / "mine.npz", ArrayKeys("feats", "labels", "tf", "tl"))
    np.testing.assert_array_equal(got.x_train, d.x_train)
    assert got.num_classes == int(max(d.y_train.max(), d.y_test.max())) + 1
    store = build_store(DataConfig(data=str(tmp_path / "mine.npz"), data_format=DataFormat.ARRAYS,
                                   x_key="feats", y_key="labels", x_test_key="tf",
                                   y_test_key="tl", num_classes=5, clients=4,
                                   partitioner="iid"), site="lab")
    assert store.summary.example_shape == (7,) and store.summary.example_dtype == np.float64
    assert store.summary.site == "lab" and sum(store.summary.client_sizes) == 200


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((4, 2)), y_train=np.zeros(4, int), x_test=np.zeros((2, 2))),
     r"lacks the arrays \['y_test'\]"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.zeros(4), x_test=np.zeros((2, 2)),
          y_test=np.zeros(2, int)), "train labels must be a 1-D integer array"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.zeros(3, int), x_test=np.zeros((2, 2)),
          y_test=np.zeros(2, int)), "4 train examples but 3 labels"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.zeros(4, int), x_test=np.zeros((2, 3)),
          y_test=np.zeros(2, int)), "differ"),
    (dict(x_train=np.zeros((4, 2)), y_train=np.full(4, 7), x_test=np.zeros((2, 2)),
          y_test=np.zeros(2, int)), r"labels must lie in \[0, 5\)"),
])
def test_a_malformed_site_file_is_refused_with_what_is_wrong(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        load_arrays(tmp_path / "bad.npz", num_classes=5)


def test_a_pickled_array_is_never_loaded(tmp_path):
    np.savez(tmp_path / "p.npz", x_train=np.array([{"a": 1}] * 4, dtype=object),
             y_train=np.zeros(4, int), x_test=np.zeros((2, 1)), y_test=np.zeros(2, int))
    with pytest.raises(DatasetError, match="without pickles"):
        load_arrays(tmp_path / "p.npz")


@pytest.mark.parametrize("partitioner", [p for p in Partitioner if p is not Partitioner.NATURAL])
def test_sites_cover_the_data_set_exactly_once(partitioner, tmp_path):
    d = labelled(n=400, classes=4)
    sites = split_sites(d, SiteSplitConfig(sites=3, site_partitioner=partitioner))
    assert [s.name for s in sites] == ["site-0", "site-1", "site-2"]
    # equal-shard splits (reference, shards) leave out the remainder of n / shards
    exact = partitioner in (Partitioner.IID, Partitioner.DIRICHLET)
    for split, n in (("y_train", 400), ("y_test", 100)):
        left_out = n - sum(len(getattr(s, split)) for s in sites)
        assert left_out == 0 if exact else 0 <= left_out < 2 * 3
    rows = np.concatenate([s.x_train for s in sites])
    assert len(np.unique(rows, axis=0)) == len(rows)  # no example at two sites
    paths = write_sites(sites, str(tmp_path / "out"))
    again = load_arrays(paths[1], num_classes=4)
    np.testing.assert_array_equal(again.x_train, sites[1].x_train)


def test_a_group_array_makes_one_site_per_value():
    d = labelled(n=12)
    groups, groups_test = np.array([3, 1] * 6), np.array([1, 3, 3])
    sites = split_by_group(d, groups, groups_test)
    assert [s.name for s in sites] == ["site-1", "site-3"]
    np.testing.assert_array_equal(sites[1].x_train, d.x_train[groups == 3])
    assert len(sites[0].y_test) == 1 and len(sites[1].y_test) == 2
