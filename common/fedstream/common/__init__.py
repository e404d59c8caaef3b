"""Pieces every fedstream service shares: tensor codec, wire serde, errors, gRPC plumbing."""
