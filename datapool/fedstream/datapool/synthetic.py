"""Synthetic(alpha, beta): the generated federation of the FedProx paper (Li et al., MLSys
2020), which LEAF (Caldas et al. 2018) ships too. No download: every device draws its own
model and its own data, and alpha and beta set how much those differ between devices.

For device k, as the paper's generator draws them (alpha and beta are standard deviations,
as its code has them):
- its model: u_k ~ N(0, alpha^2), W_k (60 x 10) and b_k (10) with entries ~ N(u_k, 1);
- its data: B_k ~ N(0, beta^2), v_k (60) with entries ~ N(B_k, 1), and examples
  x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj = j^-1.2;
- labels y = argmax(softmax(W_k x + b_k));
- its size: int(lognormal(4, 2)) + 50 examples (a power law), 90% of them for training and
  the rest held out, after a shuffle.
The IID variant draws one W and b from N(0, 1) for every device and every v_k = 0.

Devices are the clients: the data carries each example's device, for `--partitioner natural`.
Everything comes from one seeded generator, so the same seed gives the same federation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedstream.datapool.arrays import LabelledData

DIMENSION = 60
CLASSES = 10
TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class Synthetic:
    alpha: float = 0.0
    beta: float = 0.0
    iid: bool = False
    devices: int = 30
    seed: int = 0

    @property
    def name(self) -> str:
        return "synthetic-iid" if self.iid else f"synthetic({self.alpha:g},{self.beta:g})"


def device_sizes(rng: np.random.Generator, devices: int) -> np.ndarray:
    return rng.lognormal(4, 2, devices).astype(np.int64) + 50


def covariance_diagonal() -> np.ndarray:
    return np.arange(1, DIMENSION + 1, dtype=np.float64) ** -1.2


def generate(spec: Synthetic) -> LabelledData:
    if spec.devices < 1 or spec.alpha < 0 or spec.beta < 0:
        raise ValueError(f"synthetic data needs devices >= 1 and alpha, beta >= 0, not {spec}")
    rng = np.random.default_rng(spec.seed)
    sizes = device_sizes(rng, spec.devices)
    scale = np.sqrt(covariance_diagonal())
    if spec.iid:
        shared = rng.normal(0, 1, (DIMENSION, CLASSES)), rng.normal(0, 1, CLASSES)
        means = np.zeros((spec.devices, DIMENSION))
    else:
        model_means = rng.normal(0, spec.alpha, spec.devices)
        data_means = rng.normal(0, spec.beta, spec.devices)
        means = rng.normal(data_means[:, None], 1, (spec.devices, DIMENSION))
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": [], "device": []}
    for k, n in enumerate(sizes):
        if spec.iid:
            w, b = shared
        else:
            w = rng.normal(model_means[k], 1, (DIMENSION, CLASSES))
            b = rng.normal(model_means[k], 1, CLASSES)
        x = means[k] + rng.standard_normal((n, DIMENSION)) * scale
        y = np.argmax(x @ w + b, axis=1)  # softmax keeps the order: its argmax is the logits'
        order = rng.permutation(n)
        train = int(TRAIN_FRACTION * n)
        parts["x_train"].append(x[order[:train]])
        parts["y_train"].append(y[order[:train]])
        parts["x_test"].append(x[order[train:]])
        parts["y_test"].append(y[order[train:]])
        parts["device"].append(np.full(train, k))
    joined = {key: np.concatenate(value) for key, value in parts.items()}
    return LabelledData(spec.name, joined["x_train"].astype(np.float32),
                        joined["y_train"].astype(np.int64), joined["x_test"].astype(np.float32),
                        joined["y_test"].astype(np.int64), CLASSES,
                        client_ids=joined["device"])
