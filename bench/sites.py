"""What crosses which link, one data pool against three data sites: `python bench/sites.py`
(about 2 minutes on 2 cores; writes bench/results/sites.json and prints a Markdown summary).

Both runs are `fedstream run` on the reference recipe (FedSGD, 100 clients in all, batch 32,
server Adam), every service its own process on loopback, measured side by side:

  one pool     one data pool for every client, 3 workers (units of clients of any site)
  three sites  `--sites 3`: each site its own data pool (a third of MNIST, 34 clients) and
               one worker; the coordinator reads no data pool, the sites evaluate

Per round, from the coordinator's metrics: bytes from a data pool to the workers (examples:
with sites they never leave a site), bytes from the coordinator to the workers (weights) and
back (updates), and the round time (median over the rounds after warm-up).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from local_run import local_run

HERE = Path(__file__).resolve().parent
RECIPE = ["--rounds", "30", "--eval-every", "1000", "--worker-threads", "1", "--quiet"]
SETUPS = {
    "one pool": ["--workers", "3", "--clients", "100"],
    "three sites": ["--sites", "3", "--workers", "1", "--clients", "34"],
}
WARMUP = 3


def measure(flags: list[str], out: Path) -> dict:
    rows, wall_s = local_run([*RECIPE, *flags], out)
    steady = rows[WARMUP:]
    per_round = lambda key: statistics.median(r[key] for r in steady)  # noqa: E731
    result = {
        "wall_s": wall_s,
        "round_s_median": per_round("round_s"),
        "clients_per_round": rows[-1]["clients"],
        "bytes_per_round": {"data pool -> workers": per_round("fetch_bytes"),
                            "coordinator -> workers": per_round("pull_bytes"),
                            "workers -> coordinator": per_round("push_bytes")},
    }
    if "sites" in rows[-1]:
        result["per_site"] = {
            site: {"data pool -> its workers (inside the site)":
                   statistics.median(r["sites"][site]["fetch_bytes"] for r in steady),
                   "crossing the site's boundary":
                   statistics.median(r["sites"][site]["pull_bytes"] + r["sites"][site]["push_bytes"]
                                     for r in steady)}
            for site in rows[-1]["sites"]}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in SETUPS.items():
            results[name] = measure(flags, Path(tmp) / name.replace(" ", "-"))
            print(name, json.dumps(results[name]), flush=True)
    out = HERE / "results" / "sites.json"
    out.write_text(json.dumps({"machine": platform.platform(), "recipe": RECIPE,
                               "setups": SETUPS, "results": results}, indent=1))
    print("\n| setup | round (median) | data pool -> workers | coordinator -> workers | "
          "workers -> coordinator |\n|---|---|---|---|---|")
    for name, r in results.items():
        b = r["bytes_per_round"]
        print(f"| {name} | {r['round_s_median'] * 1000:.0f} ms | "
              f"{b['data pool -> workers'] / 1e6:.2f} MB | "
              f"{b['coordinator -> workers'] / 1e6:.2f} MB | "
              f"{b['workers -> coordinator'] / 1e6:.2f} MB |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
