"""Synthetic(alpha, beta), the FedProx paper's generated federation: its statistics against
its definition (`fedstream.datapool.synthetic`), the data pool serving it one client per
device, and the logistic model that takes its 60 features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedstream.datapool.server import DataConfig, build_store
from fedstream.datapool.synthetic import DIMENSION, Synthetic, covariance_diagonal, generate


def per_device(data, split="train"):
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    return [(x[data.client_ids == k], y[data.client_ids == k])
            for k in np.unique(data.client_ids)]


def test_device_sizes_follow_the_power_law_and_split_nine_to_one():
    """int(lognormal(4, 2)) + 50 examples a device: at least 50, half of the devices at most
    50 + e^4 (104) and 84% at most 50 + e^6 (453); 90% of each device's for training."""
    data = generate(Synthetic(devices=400, seed=1))
    train = np.bincount(data.client_ids, minlength=400)
    sizes = np.round(train / 0.9).astype(int)  # int(0.9 n) = train: n within 1 of train / 0.9
    assert train.min() >= 45 and sizes.min() >= 49
    assert abs(np.mean(sizes <= 104) - 0.5) < 0.1
    assert abs(np.mean(sizes <= 453) - stats.norm.cdf(1)) < 0.1
    assert len(data.y_test) == pytest.approx(len(data.y_train) / 9, rel=0.05)


def test_features_have_the_stated_covariance_around_each_devices_mean():
    """x ~ N(v_k, diag(j^-1.2)): pooled over devices after removing each device's mean, the
    variance of feature j is j^-1.2 (within 10%: thousands of examples) and features are
    uncorrelated."""
    data = generate(Synthetic(0.5, 0.5, devices=60, seed=2))
    centred = np.concatenate([x - x.mean(axis=0) for x, _ in per_device(data)])
    variance = centred.var(axis=0)
    np.testing.assert_allclose(variance, covariance_diagonal(), rtol=0.1)
    correlation = np.corrcoef(centred[:, :5].T)
    assert np.abs(correlation - np.eye(5)).max() < 0.05


@pytest.mark.parametrize("beta, spread", [(0.0, 1 / DIMENSION), (1.0, 1 + 1 / DIMENSION)])
def test_beta_sets_how_far_the_devices_data_means_lie_apart(beta, spread):
    """v_k has entries N(B_k, 1) with B_k ~ N(0, beta^2): across devices, the average of a
    device's feature means varies by beta^2 + 1/60 (plus the sampling error of its own
    examples, which the bound allows)."""
    data = generate(Synthetic(0.0, beta, devices=300, seed=3))
    averages = [x.mean() for x, _ in per_device(data)]
    assert np.var(averages) == pytest.approx(spread, rel=0.35)


def test_alpha_cannot_change_a_label_as_the_paper_defines_it():
    """W_k and b_k have every entry drawn around the same u_k, which shifts all ten logits by
    u_k (sum(x) + 1) alike: the argmax, the label, does not move. With the same seed the
    draws are the same, so alpha 0 and 5 give the same data. (The paper says alpha sets how
    much the devices' models differ; by its own definition only their shared offset does.)"""
    calm, wild = (generate(Synthetic(alpha, 0.5, devices=20, seed=4)) for alpha in (0, 5))
    np.testing.assert_array_equal(calm.x_train, wild.x_train)
    assert np.mean(calm.y_train == wild.y_train) > 0.999


def test_iid_devices_share_one_label_distribution_and_non_iid_ones_do_not():
    """IID: one W and b and every v_k = 0, so the devices' label histograms are samples of
    one distribution (chi-square homogeneity not rejected); Synthetic(0, 0) gives every device
    its own W_k: rejected outright."""
    def homogeneity(data):
        table = np.stack([np.bincount(y, minlength=10) for _, y in per_device(data)]) + 0.5
        return stats.chi2_contingency(table[:, table.sum(axis=0) > 50])[1]
    assert homogeneity(generate(Synthetic(iid=True, devices=30, seed=5))) > 1e-4
    assert homogeneity(generate(Synthetic(0.0, 0.0, devices=30, seed=5))) < 1e-12


def test_labels_are_the_argmax_of_one_linear_model_in_the_iid_variant():
    """IID: y = argmax(x W + b) for one W, b, so a multinomial logistic regression fits the
    training examples almost perfectly (the data are linearly separable)."""
    data = generate(Synthetic(iid=True, devices=30, seed=6))
    assert softmax_regression_accuracy(data.x_train, data.y_train) > 0.97


def softmax_regression_accuracy(x, y, classes=10):
    """Training accuracy of a multinomial logistic regression fitted by L-BFGS."""
    from scipy.optimize import minimize
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(classes)[y]

    def loss(flat):
        w = flat.reshape(xb.shape[1], classes)
        logits = xb @ w
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return (-np.sum(onehot * np.log(p + 1e-12)) / len(x),
                (xb.T @ (p - onehot) / len(x)).ravel())
    fitted = minimize(loss, np.zeros(xb.shape[1] * classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": 300})
    return np.mean(np.argmax(xb @ fitted.x.reshape(-1, classes), axis=1) == y)


def test_the_same_seed_gives_the_same_federation_and_another_seed_another():
    a, b, c = (generate(Synthetic(1, 1, devices=10, seed=s)) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_train.shape != c.x_train.shape or not np.array_equal(a.x_train, c.x_train)


def test_the_data_pool_serves_one_client_per_device_and_asks_for_the_natural_partition():
    config = DataConfig(data_format="synthetic", partitioner="natural", clients=30,
                        synthetic_alpha=1, synthetic_beta=1, data_seed=0)
    store = build_store(config)
    data = generate(Synthetic(1, 1, devices=30, seed=0))
    assert store.summary.client_sizes == tuple(np.bincount(data.client_ids).tolist())
    assert store.summary.example_shape == (60,) and store.summary.num_classes == 10
    assert store.summary.dataset == "synthetic(1,1)"
    with pytest.raises(ValueError, match="give --partitioner natural"):
        DataConfig(data_format="synthetic", clients=30)


def test_the_logistic_model_takes_the_datas_shape():
    from fedstream.coordinator.models import build_model
    model = build_model("logistic", 0, 10, (60,))
    assert model.count_params() == 610 and tuple(model.input_shape) == (None, 60)
    with pytest.raises(ValueError, match="height x width"):
        build_model("cnn", 0, 10, (60,))
