"""`fedstream run`: a whole federation on this machine, every service its own OS process.

Starts a data pool, a coordinator and K workers with `python -m fedstream.cli`, exactly as a
user would on separate hosts but on loopback ports chosen by the services themselves (port 0,
published through a file in the run folder). Shows progress from the coordinator's metrics
file, prints the final test accuracy and stops every process, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from fedstream.coordinator.config import (
    FederationConfig,
    add_federation_arguments,
    federation_argv,
    federation_config_from_args,
)
from fedstream.datapool.server import DataPoolConfig, add_data_arguments
from fedstream.datapool.server import data_config_from_args as data_config

START_TIMEOUT_S = 300.0  # first start may fetch MNIST and load TensorFlow
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class LocalRunConfig:
    data: DataPoolConfig = field(default_factory=DataPoolConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    workers: int = 2  # worker processes
    worker_threads: int = 0  # TensorFlow threads per worker (0: cores / workers)
    coordinator_threads: int = 0  # TensorFlow threads of the coordinator (0: all cores; it
    # computes only while the workers wait for the next round, so it oversubscribes nothing)
    device: str | None = None  # worker device; None: first GPU, else CPU
    out: str = ""  # run folder for logs, metrics, weights ("" : runs/<timestamp>)
    prometheus_port: int | None = None  # the coordinator's Prometheus port (off: None)
    straggler_delay_s: float = 0.0  # worker 0 sleeps this long per unit: a slow device
    tls: bool = False  # every link over TLS, with a throwaway CA made in <out>/tls
    mtls: bool = False  # and servers require client certificates
    quiet: bool = False  # print only the final line


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--worker-threads", type=int, default=0,
                   help="TensorFlow threads per worker (0: cores / workers)")
    p.add_argument("--coordinator-threads", type=int, default=0,
                   help="TensorFlow threads of the coordinator (0: TensorFlow's default)")
    p.add_argument("--device", default=None, help="workers' device: /CPU:0 or /GPU:<n>")
    p.add_argument("--out", default="", help="run folder (default: runs/<timestamp>)")
    p.add_argument("--prometheus-port", type=int, default=None,
                   help="the coordinator serves Prometheus metrics on this port (default: off)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--straggler-delay-s", type=float, default=0.0,
                   help="worker 0 sleeps this long after each unit (a slow device)")
    p.add_argument("--tls", action="store_true",
                   help="every link over TLS, certificates from a throwaway CA in <out>/tls")
    p.add_argument("--mtls", action="store_true", help="--tls, and servers verify clients too")
    add_federation_arguments(p)


def config_from_args(args: argparse.Namespace) -> LocalRunConfig:
    return LocalRunConfig(
        data=data_config(args),
        federation=federation_config_from_args(args, workers=args.workers),
        workers=args.workers, worker_threads=args.worker_threads,
        coordinator_threads=args.coordinator_threads, device=args.device,
        out=args.out or time.strftime("runs/run-%Y%m%d-%H%M%S"), quiet=args.quiet,
        prometheus_port=args.prometheus_port, tls=args.tls or args.mtls, mtls=args.mtls,
        straggler_delay_s=args.straggler_delay_s)


class Processes:
    """Child processes in their own sessions (Ctrl-C reaches only us), stopped in order."""

    def __init__(self, out: str):
        self.out = out
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log_file = open(os.path.join(self.out, f"{name}.log"), "w")
        proc = subprocess.Popen([sys.executable, "-m", "fedstream.cli", *argv],
                                stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log_file.close()
        self.children.append((name, proc))
        return proc

    def address(self, name: str, proc: subprocess.Popen) -> str:
        """Wait for the service to publish its bound address; fail fast if it dies."""
        port_file = os.path.join(self.out, f"{name}.addr")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if os.path.exists(port_file):
                with open(port_file) as f:
                    return f.read().strip()
            problem = self.failed() or (proc.poll() is not None and
                                        f"{name} exited with code {proc.returncode}:\n"
                                        f"{self.tail(name)}")
            if problem:
                raise RuntimeError(problem)
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start within {START_TIMEOUT_S:.0f} s")

    def failed(self) -> str | None:
        """The first child that exited with an error, with the end of its log."""
        for name, proc in self.children:
            if proc.poll() not in (None, 0):
                return f"{name} exited with code {proc.returncode}:\n{self.tail(name)}"
        return None

    def tail(self, name: str, lines: int = 15) -> str:
        with open(os.path.join(self.out, f"{name}.log")) as f:
            return "".join(f.readlines()[-lines:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM whatever still runs (workers first, data pool last), SIGKILL after grace."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class MetricsTail:
    """Reads the rows the coordinator appended to its metrics file since the last call."""

    def __init__(self, path: str):
        self.path = path
        self._offset = 0
        self._partial = ""

    def rows(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            f.seek(self._offset)
            text = self._partial + f.read()
            self._offset = f.tell()
        *lines, self._partial = text.split("\n")
        return [json.loads(line) for line in lines if line]


def progress_line(row: dict, rounds: int) -> str:
    line = (f"round {row['round']:>4}/{rounds}  train_loss {row['train_loss']:.4f}  "
            f"{row['rounds_per_s']:.1f} rounds/s")
    if "test_acc" in row:
        line += f"  test_acc {row['test_acc']:.4f}  test_loss {row['test_loss']:.4f}"
    return line


def tls_flags(config: LocalRunConfig) -> tuple[list[str], list[str]]:
    """(server flags, worker flags) for a TLS run; the servers' certificate also serves the
    coordinator as a client of the data pool."""
    if not config.tls:
        return [], []
    from fedstream.common.tls import make_certificates
    certs = make_certificates(os.path.join(config.out, "tls"), ["127.0.0.1", "localhost"])
    ca, server, client = (str(certs[k]) for k in ("ca", "server", "client"))
    key = lambda pem: pem[:-len(".pem")] + ".key"  # noqa: E731
    mutual = ["--mtls"] if config.mtls else []
    workers = ["--tls-cert", client, "--tls-key", key(client)] if config.mtls else []
    return (["--tls-ca", ca, "--tls-cert", server, "--tls-key", key(server), *mutual],
            ["--tls-ca", ca, *workers])


class ProgressDisplay:
    """A live progress bar on a terminal (rich); elsewhere a line per evaluation and every
    10 rounds, which logs and CI read better."""

    def __init__(self, rounds: int, *, quiet: bool):
        self.rounds = rounds
        self.quiet = quiet
        self._bar = None
        if not quiet and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._bar = Progress(TextColumn("round"), MofNCompleteColumn(), BarColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self._task = self._bar.add_task("train", total=rounds, info="")
            self._bar.start()

    def say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif not self.quiet:
            print(text, flush=True)

    def update(self, row: dict) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=row["round"],
                             info=f"loss {row['train_loss']:.4f}  {row['rounds_per_s']:.1f}/s")
            if "test_acc" in row:
                self._bar.console.print(progress_line(row, self.rounds))
        elif "test_acc" in row or row["round"] % 10 == 0:
            self.say(progress_line(row, self.rounds))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(config: LocalRunConfig) -> int:
    # Ctrl-C and SIGTERM both stop every child. Set explicitly: a process started in the
    # background by a non-interactive shell inherits SIGINT ignored, and the children run in
    # their own sessions, so without this they would outlive the launcher.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    os.makedirs(config.out, exist_ok=True)
    for stale in ("datapool.addr", "coordinator.addr", "metrics.jsonl", "summary.json"):
        # a reused run folder must not hand out a dead address or mix two runs' metrics
        if os.path.exists(os.path.join(config.out, stale)):
            os.remove(os.path.join(config.out, stale))
    display = ProgressDisplay(config.federation.rounds, quiet=config.quiet)
    say = display.say
    threads = config.worker_threads or max(1, (os.cpu_count() or 1) // config.workers)
    procs = Processes(config.out)
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    tail = MetricsTail(metrics_path)
    started = time.monotonic()
    last = None
    server_tls, client_tls = tls_flags(config)
    try:
        d = config.data
        data_argv = ["datapool", "--listen", "127.0.0.1:0", "--clients", str(d.clients),
                     "--partitioner", d.partitioner, "--data-seed", str(d.seed),
                     "--dirichlet-alpha", str(d.dirichlet_alpha),
                     "--min-client-size", str(d.min_client_size),
                     "--port-file", os.path.join(config.out, "datapool.addr")]
        if d.data:
            data_argv += ["--data", d.data]
        data_argv += server_tls
        datapool = procs.address("datapool", procs.start("datapool", data_argv))
        say(f"datapool     {datapool}")
        coordinator_proc = procs.start("coordinator", [
            "coordinator", "--listen", "127.0.0.1:0", "--datapool", datapool,
            "--threads", str(config.coordinator_threads), "--metrics", metrics_path,
            "--tensorboard", os.path.join(config.out, "tensorboard"),
            "--save-weights", os.path.join(config.out, "weights.npz"),
            "--port-file", os.path.join(config.out, "coordinator.addr"),
            *federation_argv(config.federation), *server_tls,
            *([] if config.prometheus_port is None
              else ["--prometheus-port", str(config.prometheus_port)])])
        coordinator = procs.address("coordinator", coordinator_proc)
        say(f"coordinator  {coordinator}")
        for i in range(config.workers):
            argv = ["worker", "--coordinator", coordinator, "--datapool", datapool,
                    "--threads", str(threads), "--name", f"worker-{i}", *client_tls]
            if config.device:
                argv += ["--device", config.device]
            if i == 0 and config.straggler_delay_s:
                argv += ["--delay-s", str(config.straggler_delay_s)]
            procs.start(f"worker-{i}", argv)
        say(f"{config.workers} workers   {threads} TensorFlow thread(s) each; logs in {config.out}")
        while coordinator_proc.poll() is None:
            for row in tail.rows():
                last = row
                display.update(row)
            problem = procs.failed()
            if problem:
                raise RuntimeError(problem)
            time.sleep(0.1)
        for row in tail.rows():
            last = row
        if coordinator_proc.returncode != 0 or last is None:
            raise RuntimeError(f"coordinator exited with code {coordinator_proc.returncode}:\n"
                               f"{procs.tail('coordinator')}")
    except KeyboardInterrupt:
        print("interrupted: stopping every process", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"fedstream run failed: {e}", file=sys.stderr)
        return 1
    finally:
        display.close()
        procs.stop()
    summary = {**last, "wall_s": time.monotonic() - started, "out": config.out}
    with open(os.path.join(config.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"final test accuracy {last.get('test_acc', float('nan')):.4f} after round "
          f"{last['round']} ({summary['wall_s']:.1f} s); metrics in {metrics_path}")
    return 0
