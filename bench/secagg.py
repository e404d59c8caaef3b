"""What secure aggregation costs, in time and bytes per round, for 2, 5 and 10 parties:
`python bench/secagg.py` (about 5 minutes on 2 cores; writes bench/results/secagg.json and
prints a Markdown table).

For each party count P, side by side: `fedstream run --workers P` on the reference recipe
(FedSGD, 100 clients, server Adam; every worker one process and one party of every round),
with and without `--secure-aggregation`. Round time is the median over the rounds after
warm-up. Bytes per round are the tensors the coordinator counts (weights pulled, updates or
masked inputs pushed) plus, under secure aggregation, the protocol's own messages (keys,
encrypted shares, rosters, revealed shares), sized exactly as protobuf encodes them.

The crypto a party and the coordinator do per round is also timed alone, in process, at
the same model size: key agreement, Shamir sharing, the ChaCha20 masks and the unmasking.

`python bench/secagg.py --graph` (about 3 minutes) compares, in process, Bonawitz et al.'s
complete graph with SecAgg+'s sparse one (k = 2 ceil(log2 n) neighbours) for 10, 50 and 100
parties: seconds per party, seconds to unmask, and bytes each party sends and receives.
It writes bench/results/secagg-graph.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from local_run import local_run

HERE = Path(__file__).resolve().parent
PARAMETERS = 278_410  # the reference MLP
RECIPE = ["--rounds", "10", "--eval-every", "1000", "--worker-threads", "1", "--quiet"]
WARMUP = 3


def protocol_bytes(parties: int) -> dict[str, int]:
    """Every secure-aggregation message of one round with `parties` parties, as protobuf
    encodes them: (party -> coordinator, coordinator -> party), summed over the parties."""
    from fedstream.v1 import coordinator_pb2 as pb

    key, ct = bytes(32), bytes(12 + 64 + 16)
    roster = [pb.PartyKeys(party=q + 1, share_key=key, mask_key=key) for q in range(parties)]
    others = [pb.EncryptedShare(party=q + 2, ciphertext=ct) for q in range(parties - 1)]
    up = (pb.AdvertiseKeysRequest(worker_id="w1-00000000", round=1, unit=0, share_key=key,
                                  mask_key=key).ByteSize()
          + pb.ShareKeysRequest(worker_id="w1-00000000", round=1, unit=0,
                                shares=others).ByteSize()
          + pb.ConfirmSurvivorsRequest(worker_id="w1-00000000", round=1, unit=0,
                                       signature=bytes(64)).ByteSize()
          + pb.RevealSharesRequest(worker_id="w1-00000000", round=1, unit=0, shares=[
              pb.RevealedShare(party=q + 1, self_mask_seed=key) for q in range(parties)])
          .ByteSize())
    down = sum(pb.Assignment(action=a, round=1, version=1, secure=s).ByteSize() for a, s in [
        (pb.Assignment.SHARE_KEYS, pb.SecureStep(party=1, threshold=parties, roster=roster)),
        (pb.Assignment.MASK, pb.SecureStep(party=1, sharers=range(1, parties + 1),
                                           inbox=others, range=64.0, bits=18)),
        (pb.Assignment.CONFIRM, pb.SecureStep(party=1, survivors=range(1, parties + 1))),
        (pb.Assignment.UNMASK, pb.SecureStep(
            party=1, survivors=range(1, parties + 1), confirmed=range(1, parties + 1),
            confirmations=[pb.Confirmation(party=q + 1, signature=bytes(64))
                           for q in range(parties)]))])
    return {"parties -> coordinator": parties * up, "coordinator -> parties": parties * down}


def crypto_seconds(parties: int, neighbours: int = 0) -> dict[str, float]:
    """One round's cryptography at the reference model's size, in process: what a party
    does (keys, shares, masking) and what the coordinator does to unmask, no dropouts; with
    `neighbours`, SecAgg+'s sparse graph."""
    from fedstream.coordinator.secure_sum import CIPHERTEXT_BYTES, SecureSum
    from fedstream.worker.secure_party import SecureParty

    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1, 1, PARAMETERS).astype(np.float32) for _ in range(parties)]
    secure = SecureSum(1, {q + 1: 50.0 for q in range(parties)}, PARAMETERS + 1, 0.6, 64.0,
                       0.0, 60.0, 0.0, neighbours=neighbours)
    t0 = time.perf_counter()
    members = {q + 1: SecureParty(1, q, [inputs[q]], 50.0, 1.0) for q in range(parties)}
    for p in members.values():
        secure.advertise(p.keys)
    secure.advance(0.0)
    for q, p in members.items():
        secure.share(q, p.share(secure.step_for(q)[1]))
    secure.advance(0.0)
    t1 = time.perf_counter()
    for q, p in members.items():
        secure.mask(q, p.mask(secure.step_for(q)[1]))
    secure.advance(0.0)
    t2 = time.perf_counter()
    for q, p in members.items():
        secure.confirm(q, p.confirm(secure.step_for(q)[1]))
    secure.advance(0.0)
    for q, p in members.items():
        secure.reveal(q, p.unmask(secure.step_for(q)[1]))
    secure.advance(0.0)  # unmasks
    t3 = time.perf_counter()
    assert secure.result is not None
    shares = statistics.mean(len(secure.parties[q].shares) for q in secure.sharers)
    return {"keys_and_shares_per_party_s": (t1 - t0) / parties,
            "masking_per_party_s": (t2 - t1) / parties,
            "unmasking_at_coordinator_s": t3 - t2, "threshold": secure.threshold,
            "shares_sent_per_party": shares,
            # its shares out, then the as many shares in and as many revealed (32 bytes),
            # besides its masked input (4 bytes a value, as without secure aggregation)
            "protocol_bytes_per_party": shares * (2 * CIPHERTEXT_BYTES + 32 + 64)}


def graph_costs(party_counts: list[int]) -> dict:
    """Complete against sparse graph, side by side for each party count."""
    out = {}
    for n in party_counts:
        k = 2 * math.ceil(math.log2(n))
        out[str(n)] = {"neighbours": k, "complete": crypto_seconds(n),
                       "sparse": crypto_seconds(n, neighbours=k)}
        c, s = out[str(n)]["complete"], out[str(n)]["sparse"]
        print(f"| {n} | {k} | {c['keys_and_shares_per_party_s'] + c['masking_per_party_s']:.3f}"
              f" | {s['keys_and_shares_per_party_s'] + s['masking_per_party_s']:.3f} | "
              f"{c['unmasking_at_coordinator_s']:.2f} | {s['unmasking_at_coordinator_s']:.2f} | "
              f"{c['protocol_bytes_per_party']} | {s['protocol_bytes_per_party']} |", flush=True)
    return out


def measure(parties: int, secure: bool, out: Path) -> dict:
    flags = ["--workers", str(parties)] + (["--secure-aggregation"] if secure else [])
    rows, wall_s = local_run([*RECIPE, *flags], out)
    steady = rows[WARMUP:]
    median = lambda key: statistics.median(r[key] for r in steady)  # noqa: E731
    tensors = median("pull_bytes") + median("push_bytes")
    result = {"round_s_median": median("round_s"), "wall_s": wall_s,
              "tensor_bytes_per_round": tensors, "final_train_loss": rows[-1]["train_loss"]}
    if secure:
        extra = protocol_bytes(parties)
        result["protocol_bytes_per_round"] = extra
        result["bytes_per_round"] = tensors + sum(extra.values())
        result["abandoned"] = sum(r["secagg_abandoned"] for r in rows)
    else:
        result["bytes_per_round"] = tensors
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parties", type=int, nargs="+", default=[2, 5, 10])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--graph", action="store_true", help="complete against sparse graph, in "
                                                        "process, for 10, 50 and 100 parties")
    args = p.parse_args()
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    if args.graph:
        print("| parties | k | party s complete | party s sparse | unmask s complete | "
              "unmask s sparse | protocol bytes/party complete | sparse |")
        print("|---|---|---|---|---|---|---|---|")
        doc = {"machine": machine, "parameters": PARAMETERS,
               "results": graph_costs(args.parties if args.parties != [2, 5, 10]
                                      else [10, 50, 100])}
        out = args.out or HERE / "results" / "secagg-graph.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        return
    args.out = args.out or HERE / "results" / "secagg.json"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for parties in args.parties:
            plain = measure(parties, False, Path(tmp) / f"plain{parties}")
            secure = measure(parties, True, Path(tmp) / f"secure{parties}")
            results[str(parties)] = {
                "plain": plain, "secure": secure, "crypto": crypto_seconds(parties),
                "time_ratio": secure["round_s_median"] / plain["round_s_median"],
                "bytes_ratio": secure["bytes_per_round"] / plain["bytes_per_round"]}
    doc = {"machine": machine, "recipe": RECIPE, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print("| parties | round s plain | round s secure | ratio | MB/round plain | MB/round "
          "secure | ratio | party crypto s (share + mask) | unmask s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        c = r["crypto"]
        print(f"| {n} | {r['plain']['round_s_median']:.3f} | {r['secure']['round_s_median']:.3f}"
              f" | {r['time_ratio']:.2f} | {r['plain']['bytes_per_round'] / 1e6:.3f} | "
              f"{r['secure']['bytes_per_round'] / 1e6:.3f} | {r['bytes_ratio']:.4f} | "
              f"{c['keys_and_shares_per_party_s'] + c['masking_per_party_s']:.3f} | "
              f"{c['unmasking_at_coordinator_s']:.3f} |")


if __name__ == "__main__":
    main()
