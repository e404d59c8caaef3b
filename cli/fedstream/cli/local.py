"""`fedstream run`: a whole federation on this machine, every service its own OS process.

Starts a data pool, a coordinator and K workers with `python -m fedstream.cli`, exactly as a
user would on separate hosts but on loopback ports chosen by the services themselves (port 0,
published through a file in the run folder). With `--sites N` the data set is first split
into one file per site (`<out>/sites/`), and each site gets a data pool of its own and K
workers of its own; the coordinator reads no data pool and the sites evaluate. Shows
progress from the coordinator's metrics file, prints the final test accuracy and stops every
process, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from fedstream.common.backend import BACKENDS, backend_named, backend_option
from fedstream.common.options import add_options, from_args, option, section, to_argv
from fedstream.common.tls import TlsConfig
from fedstream.coordinator.config import CoordinatorConfig, FederationConfig, MetricsConfig
from fedstream.datapool.server import DataConfig, DataFormat, DataPoolConfig
from fedstream.datapool.sites import SiteSplitConfig
from fedstream.worker.config import WorkerConfig

START_TIMEOUT_S = 300.0  # first start may fetch MNIST and load TensorFlow
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class LocalRunConfig:
    data: DataConfig = section(DataConfig, "data")
    split: SiteSplitConfig = section(SiteSplitConfig, "data sites")
    federation: FederationConfig = section(FederationConfig,
                                           "federation (defaults: the reference recipe)")
    workers: int = option(2, "worker processes (per site, with --sites); the first round "
                             "waits for all of them")
    backend: str | None = backend_option()  # the coordinator's and the workers'
    worker_threads: int = option(0, "compute threads per worker (0: cores / workers)")
    coordinator_threads: int = option(0, "compute threads of the coordinator (0: the "
                                         "backend's default; it computes only while the "
                                         "workers wait, so it oversubscribes nothing)")
    device: str | None = option(None, "workers' device: /CPU:0 or /GPU:<n> (default: the "
                                      "first GPU, else the CPU)")
    out: str = option("", "run folder for logs, metrics, weights (default: runs/<timestamp>)")
    sinks: MetricsConfig = section(MetricsConfig)
    straggler_delay_s: float = option(0.0, "worker 0 sleeps this long after each unit (a slow "
                                           "device)")
    tls: bool = option(False, "every link over TLS, certificates from a throwaway CA in "
                              "<out>/tls")
    mtls: bool = option(False, "--tls, and servers verify clients too")
    quiet: bool = option(False, "print only the final line")


# the launcher writes the coordinator's metrics and TensorBoard files into the run folder,
# makes the coordinator wait for the workers it starts, and names the sites it splits
LAUNCHER_SETS = ("min_workers", "metrics", "tensorboard", "RoundsConfig.sites")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, LocalRunConfig, exclude=LAUNCHER_SETS)


def config_from_args(args: argparse.Namespace) -> LocalRunConfig:
    split = from_args(SiteSplitConfig, args)
    return from_args(LocalRunConfig, args,
                     federation={"min_workers": args.workers * max(1, split.sites),
                                 "sites": ",".join(split.names)},
                     out=args.out or time.strftime("runs/run-%Y%m%d-%H%M%S"),
                     tls=args.tls or args.mtls)


def site_data_configs(config: LocalRunConfig) -> dict[str, DataConfig]:
    """The data of each site: the data set split into `<out>/sites/<site>.npz`, each loaded
    as arrays and partitioned over the site's clients as the data options say."""
    from fedstream.datapool.server import load_data
    from fedstream.datapool.sites import split_sites, write_sites
    data = load_data(config.data)
    paths = write_sites(split_sites(data, config.split), os.path.join(config.out, "sites"))
    return {name: dataclasses.replace(config.data, data=path, data_format=DataFormat.ARRAYS,
                                      x_key="x_train", y_key="y_train", x_test_key="x_test",
                                      y_test_key="y_test", num_classes=data.num_classes)
            for name, path in zip(config.split.names, paths)}


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


def training_figure(row: dict) -> str:
    """The training loss, or under DP (which withholds it) the epsilon spent."""
    if "train_loss" in row:
        return f"train_loss {row['train_loss']:.4f}"
    if "dp_epsilon" in row:
        return f"epsilon {row['dp_epsilon']:.3g}" + (
            f" ({row['dp_guarantee']})" if "dp_guarantee" in row else "")
    return ""


def progress_line(row: dict, rounds: int) -> str:
    line = (f"round {row['round']:>4}/{rounds}  {training_figure(row)}  "
            f"{row['rounds_per_s']:.1f} rounds/s")
    if "test_acc" in row:
        line += f"  test_acc {row['test_acc']:.4f}  test_loss {row['test_loss']:.4f}"
    return line


def tls_configs(config: LocalRunConfig) -> tuple[TlsConfig, TlsConfig]:
    """(servers', workers') TLS for a TLS run; the servers' certificate also serves the
    coordinator as a client of the data pool."""
    if not config.tls:
        return TlsConfig(), TlsConfig()
    from fedstream.common.tls import make_certificates
    certs = make_certificates(os.path.join(config.out, "tls"), ["127.0.0.1", "localhost"])
    ca, server, client = (str(certs[k]) for k in ("ca", "server", "client"))
    key = lambda pem: pem[:-len(".pem")] + ".key"  # noqa: E731
    workers = TlsConfig(ca=ca, cert=client, key=key(client)) if config.mtls else TlsConfig(ca=ca)
    return TlsConfig(ca=ca, cert=server, key=key(server), mutual=config.mtls), workers


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
                             info=f"{training_figure(row)}  {row['rounds_per_s']:.1f}/s")
            if "test_acc" in row:
                self._bar.console.print(progress_line(row, self.rounds))
        elif "test_acc" in row or row["round"] % 10 == 0:
            self.say(progress_line(row, self.rounds))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def start_pools(config: LocalRunConfig, procs: Processes,
                tls: TlsConfig) -> tuple[dict[str, str], int]:
    """Site name -> data pool address: one pool for every client (site ""), or one per site;
    and the sites' number of classes (0: the one pool says)."""
    datas = site_data_configs(config) if config.split.sites else {"": config.data}
    started = {}
    for site, data in datas.items():
        name = f"datapool-{site}" if site else "datapool"
        started[site] = (name, procs.start(name, ["datapool", *to_argv(DataPoolConfig(
            listen="127.0.0.1:0", port_file=os.path.join(config.out, f"{name}.addr"),
            site=site, data=data, tls=tls))]))
    classes = 0 if "" in datas else next(iter(datas.values())).num_classes
    return {site: procs.address(name, proc) for site, (name, proc) in started.items()}, classes


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(config: LocalRunConfig) -> int:
    # Ctrl-C and SIGTERM both stop every child. Set explicitly: a process started in the
    # background by a non-interactive shell inherits SIGINT ignored, and the children run in
    # their own sessions, so without this they would outlive the launcher.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    os.makedirs(config.out, exist_ok=True)
    for stale in os.listdir(config.out):
        # a reused run folder must not hand out a dead address or mix two runs' metrics
        if stale.endswith(".addr") or stale in ("metrics.jsonl", "summary.json"):
            os.remove(os.path.join(config.out, stale))
    display = ProgressDisplay(config.federation.rounds, quiet=config.quiet)
    say = display.say
    workers = config.workers * max(1, config.split.sites)
    threads = config.worker_threads or max(1, (os.cpu_count() or 1) // workers)
    procs = Processes(config.out)
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    tail = MetricsTail(metrics_path)
    started = time.monotonic()
    last = None
    server_tls, client_tls = tls_configs(config)
    try:
        pools, num_classes = start_pools(config, procs, server_tls)
        for site, address in pools.items():
            say(f"datapool     {address}" + (f"  (site {site})" if site else ""))
        backend = backend_named(config.backend)
        sinks = MetricsConfig(metrics=metrics_path,  # TensorBoard's files need TensorFlow
                              tensorboard=os.path.join(config.out, "tensorboard")
                              if BACKENDS[backend].summaries else None,
                              prometheus_port=config.sinks.prometheus_port)
        reads = {"datapool": pools[""]} if "" in pools else {"num_classes": num_classes}
        coordinator_file = os.path.join(config.out, "coordinator.addr")  # workers read it
        coordinator_proc = procs.start("coordinator", ["coordinator", *to_argv(CoordinatorConfig(
            listen="127.0.0.1:0", **reads, backend=config.backend,
            threads=config.coordinator_threads,
            sinks=sinks, save_weights=os.path.join(config.out, "weights.npz"),
            port_file=coordinator_file, tls=server_tls,
            federation=config.federation))])
        for site, datapool in pools.items():  # they load their libraries while it starts
            for i in range(config.workers):
                name = f"worker-{site}-{i}" if site else f"worker-{i}"
                worker = WorkerConfig(
                    coordinator_file=coordinator_file,
                    datapool=datapool, site=site, device=config.device,
                    backend=config.backend, threads=threads, name=name, tls=client_tls,
                    delay_s=config.straggler_delay_s if i == 0 and not site else 0.0)
                procs.start(name, ["worker", *to_argv(worker)])
        coordinator = procs.address("coordinator", coordinator_proc)
        say(f"coordinator  {coordinator}")
        say(f"{config.workers * len(pools)} workers   {threads} {backend} thread(s) each; "
            f"logs in {config.out}")
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
