"""Randomness that a privacy claim rests on: DP noise, the client sample under DP, the
adaptive clip's count noise. It comes from the operating system's CSPRNG (a fresh 128-bit
`SeedSequence` from `secrets` per draw), is never written to a config, a log or a
checkpoint, and nobody else can regenerate it.

A research run may seed it so that runs repeat (and `run` equals `simulate` bit for bit);
such a run is not private, and every epsilon it reports says so (`SEEDED`).
"""

from __future__ import annotations

import secrets

import numpy as np

SEEDED = "not private: seeded"


def private_generator(research_seed: int | None, *key: int) -> np.random.Generator:
    """A generator nobody can reproduce; with a research seed, the one (seed, *key) gives."""
    if research_seed is None:
        return np.random.default_rng(np.random.SeedSequence(secrets.randbits(128)))
    return np.random.default_rng([research_seed, *key])
