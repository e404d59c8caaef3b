"""What workers hold of each version: the weights as the wire gives them.

Raw, the image is the weights. With `--weights-encoding float16|bfloat16` it is their
rounding. With `--weights-delta` it is a chain: the first image is the encoded weights, and
version v's image is image(v-1) + D(v), where D(v) = decode(encode(w_v - image(v-1))) is
what a worker holding v-1 pulls. Rounding errors do not add up along the chain: an image is
never further from its weights than one encoding of the last change, which is small. The
coordinator computes the image at every new version (so both run modes and every worker see
the same chain) and keeps the current one and the last delta; a worker holding an older
version pulls the current image in float32.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedstream.common.codecs import F32, Encoded, Encoding, encoded_size, transmit
from fedstream.common.protocol import Weights
from fedstream.common.tensors import TensorSpec


class WeightsImage:
    def __init__(self, encoding: Encoding, delta: bool):
        self.encoding = encoding
        self.delta = delta
        self.version = 0
        self.arrays: tuple[np.ndarray, ...] = ()
        self._delta: tuple[int, list[np.ndarray], Encoded] | None = None  # (from, D, bytes)

    @property
    def full_encoding(self) -> Encoding:
        """How a worker without the previous version pulls the image: exactly."""
        return Encoding.RAW if self.delta else self.encoding

    def advance(self, version: int, weights: Sequence[np.ndarray], *,
                chained: bool = True) -> None:
        """Version `version` with `weights`; `chained`: it follows the image held (not a
        restart from a checkpoint)."""
        previous = self.arrays if chained and self.version == version - 1 else None
        if self.encoding is Encoding.RAW and not self.delta:
            image = tuple(weights)
        elif self.delta and previous:
            change = [np.asarray(w, F32) - p for w, p in zip(weights, previous)]
            encoded, d = transmit(self.encoding, change)
            image = tuple(p + x for p, x in zip(previous, d))
            self._delta = (version - 1, d, encoded)
        else:
            image = tuple(transmit(self.encoding, weights)[1])
            self._delta = None
        for a in image:
            a.flags.writeable = False
        self.version, self.arrays = version, image

    def delta_from(self, have_version: int) -> tuple[list[np.ndarray], Encoded] | None:
        """The decoded change and its payload that take a holder of `have_version` to the
        current image; None when there is none."""
        if self._delta is None or self._delta[0] != have_version:
            return None
        return self._delta[1], self._delta[2]

    def pull(self, have_version: int, specs: Sequence[TensorSpec]) -> Weights:
        """What a worker holding `have_version` pulls: nothing when it is current; with
        weights deltas, the change from the previous version too; else the whole image."""
        if have_version == self.version:
            return Weights(self.version, tuple(specs), None)
        delta = self.delta_from(have_version)
        if delta is None:
            return Weights(self.version, tuple(specs), list(self.arrays),
                           wire_bytes=encoded_size(self.full_encoding, specs))
        change, encoded = delta
        return Weights(self.version, tuple(specs), list(self.arrays), delta_from=have_version,
                       delta=change, encoded_delta=encoded, wire_bytes=len(encoded.payload))
