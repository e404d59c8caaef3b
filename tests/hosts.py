"""Separate hosts on one machine: network namespaces with their own addresses on a private
bridge, for end-to-end tests that need real links to cut and firewall. Needs root and
`ip netns` (iproute2); `firewall_available` also needs nftables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"fsprobe{uuid.uuid4().hex[:6]}"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "del", probe)
    except subprocess.CalledProcessError as e:
        return f"this machine forbids `ip netns add`: {e.stderr.strip()}"
    return None


class Hosts:
    """Namespaces on a private bridge: name -> address 10.77.<n>.<i>/24."""

    def __init__(self, names: list[str]):
        tag = uuid.uuid4().hex[:4]
        self.bridge = f"fsbr{tag}"
        self.subnet = f"10.{77 + int(tag[:2], 16) % 100}.{int(tag[2:], 16) % 250}"
        self.ns, self.addr, self.veth = {}, {}, {}
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for i, name in enumerate(names, start=1):
            ns, outside, inside = f"fs{tag}{name}", f"fv{tag}{i}o", f"fv{tag}{i}i"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "link", "set", outside, "master", self.bridge)
            sh("ip", "link", "set", outside, "up")
            address = f"{self.subnet}.{i}"
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            self.ns[name], self.addr[name], self.veth[name] = ns, address, outside

    def run(self, name: str, argv: list[str], log: Path) -> subprocess.Popen:
        """`python -m fedstream.cli ARGV` inside `name`'s namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns[name], sys.executable, "-m",
                                 "fedstream.cli", *argv],
                                stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def cut(self, name: str) -> None:
        sh("ip", "link", "set", self.veth[name], "down")

    def remove(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def firewall_available() -> str | None:
    """Why namespaced nftables rules cannot be used here (None: they can)."""
    reason = netns_available()
    if reason:
        return reason
    if shutil.which("nft") is None:
        return "needs nftables' `nft` (apt-get install nftables)"
    return None


def drop_outside(hosts: Hosts, name: str, allowed: list[str]) -> None:
    """In `name`'s namespace, drop and count every IPv4 packet to or from an address not in
    `allowed` (nor loopback); IPv6 is switched off there so nothing leaves by it."""
    peers = ", ".join(allowed)
    ruleset = f"""
table inet fence {{
  counter dropped_in {{}}
  counter dropped_out {{}}
  chain input {{ type filter hook input priority 0; policy accept;
    iif "lo" accept
    ip saddr {{ {peers} }} accept
    meta nfproto ipv4 counter name dropped_in drop
  }}
  chain output {{ type filter hook output priority 0; policy accept;
    oif "lo" accept
    ip daddr {{ {peers} }} accept
    meta nfproto ipv4 counter name dropped_out drop
  }}
}}
"""
    ns = hosts.ns[name]
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset, check=True,
                   capture_output=True, text=True)


def dropped(hosts: Hosts, name: str) -> dict[str, int]:
    """Packets the fence in `name`'s namespace dropped, by direction."""
    out = subprocess.run(["ip", "netns", "exec", hosts.ns[name], "nft", "-j", "list",
                          "counters"], check=True, capture_output=True, text=True).stdout
    return {item["counter"]["name"]: item["counter"]["packets"]
            for item in json.loads(out)["nftables"] if "counter" in item}


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Kill whatever of `procs` still runs, and reap them all."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
