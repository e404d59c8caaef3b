"""What makes an update acceptable, as pure functions shared by every round policy: each
raises the domain error a worker can act on, and none changes anything."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fedstream.common.errors import InvalidArgument, PermissionDenied
from fedstream.common.protocol import UpdateMeta
from fedstream.common.tensors import TensorSpec, spec_of
from fedstream.coordinator.units import Unit


def check_claim(meta: UpdateMeta, unit: Unit) -> None:
    """The update is for the unit's clients, from the worker that holds its lease (or the
    unit is already in, which makes it a duplicate)."""
    if tuple(meta.client_ids) != unit.client_ids:
        raise PermissionDenied(f"unit {meta.unit} holds other clients than the update lists: "
                               "push exactly the client ids of your assignment")
    if unit.update is None and unit.leased_to != meta.worker_id:
        raise PermissionDenied(f"unit {meta.unit} is leased to another worker (your lease "
                               "expired or it was never yours): ask GetAssignment for work")


def check_weight(meta: UpdateMeta, *, per_client: bool) -> None:
    if not (math.isfinite(meta.weight) and meta.weight > 0):
        raise InvalidArgument(f"update weight {meta.weight} must be a positive finite number")
    if per_client and meta.weight != len(meta.client_ids):
        raise InvalidArgument(f"per-client updates weigh one per client: weight must be "
                              f"{len(meta.client_ids)}, not {meta.weight}")
    if meta.num_examples < 1:
        raise InvalidArgument("num_examples must be >= 1")


def expected_specs(update_specs: Sequence[TensorSpec], n_clients: int, *,
                   per_client: bool) -> list[TensorSpec]:
    """One tensor per trainable variable; per-client updates stack them [clients, ...]."""
    if not per_client:
        return list(update_specs)
    return [TensorSpec(s.name, s.dtype, (n_clients, *s.shape)) for s in update_specs]


def specs_of(arrays: Sequence[np.ndarray], expected: Sequence[TensorSpec]) -> list[TensorSpec]:
    """In process, what a header would say of `arrays`: the expected names in order (a
    tensor beyond them is named by its position, so a count check still sees it)."""
    names = [s.name for s in expected] + [f"tensor_{i}" for i in range(len(expected),
                                                                          len(arrays))]
    return [spec_of(name, np.asarray(a)) for name, a in zip(names, arrays)]


def check_specs(got: Sequence[TensorSpec], expected: Sequence[TensorSpec]) -> None:
    if len(got) != len(expected):
        raise InvalidArgument(f"update carries {len(got)} tensors, the model has "
                              f"{len(expected)} trainable variables")
    for g, want in zip(got, expected):
        if (g.name, g.dtype, g.shape) != (want.name, want.dtype, want.shape):
            raise InvalidArgument(
                f"update tensor {g.name!r} {g.dtype.name}{list(g.shape)} does not "
                f"match {want.name!r} {want.dtype.name}{list(want.shape)}: send one tensor "
                "per trainable variable in the task's order")


def check_finite(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> None:
    for spec, array in zip(specs, arrays):
        if not np.all(np.isfinite(array)):
            raise InvalidArgument(f"update tensor {spec.name!r} contains NaN or Inf: the "
                                  "client diverged or the tensor is corrupt; not applied")
