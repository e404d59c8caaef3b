"""Coordinator configuration: dataclasses, their flags and validation. No TensorFlow here,
so the CLI parses arguments without loading it."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields

from fedstream.common.auth import add_client_auth_arguments, add_server_auth_arguments
from fedstream.common.protocol import Weighting
from fedstream.common.tls import TlsConfig, add_tls_arguments, tls_from_args

MODELS = ("reference", "2nn", "cnn")  # or package.module:function
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum")  # see fedstream.coordinator.aggregate
SERVER_OPTIMIZERS = ("sgd", "adam", "adagrad", "yogi")  # see fedstream.coordinator.optimizers
UPDATES = ("gradient", "delta")
MODES = ("sync", "fedbuff", "fedasync")
STALENESS = ("constant", "polynomial", "hinge")


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = 57  # rounds to train (19 rounds = one pass over the reference's client data)
    units: int = 2  # work units per round; the same units give bit-identical models
    min_workers: int = 1  # workers that must join before the first round opens
    batch_size: int = 32  # client batch size
    weighting: str = "uniform"  # "uniform" (reference mean) or "examples"
    update: str = "gradient"  # "gradient" (FedSGD) or "delta" (local training: FedAvg family)
    local_epochs: int = 1  # delta: local passes over each client's data
    local_batch_size: int = 10  # delta: local minibatch size (0: the whole client data)
    client_lr: float = 0.1  # delta: the clients' SGD learning rate
    client_momentum: float = 0.0  # delta: the clients' SGD momentum (fresh for every client)
    prox_mu: float = 0.0  # delta: FedProx proximal coefficient (0: FedAvg)
    client_fraction: float = 1.0  # share C of the clients sampled each round
    min_clients: int = 1  # sample at least this many clients per round
    sampling_seed: int = 0  # seeds the per-round client sample
    server_optimizer: str = "adam"  # sgd (FedAvg, FedAvgM), adam, adagrad, yogi
    server_lr: float = 1e-4  # server learning rate (the reference: Adam 1e-4)
    server_momentum: float = 0.0  # sgd: momentum (FedAvgM)
    server_epsilon: float = 0.0  # adam, adagrad, yogi: epsilon (tau); 0: the optimizer's default
    dropout: bool = False  # apply dropout in client training (the reference never does)
    normalize: bool = False  # divide pixels by 255 (the reference feeds raw 0..255)
    eval_every: int = 0  # rounds between test evaluations; 0: after every pass over the data
    lease_s: float = 120.0  # a unit not pushed this long after its lease goes to another worker
    aggregator: str = "mean"  # "mean" (weighted), or robust: "median", "trimmed_mean", "krum"
    trim_fraction: float = 0.1  # trimmed_mean: share of values dropped at each end
    krum_byzantine: int = 1  # krum: the number f of faulty clients tolerated
    krum_select: int = 1  # krum: average this many best-scored updates (Multi-Krum when > 1)
    mode: str = "sync"  # sync rounds, or asynchronous: fedbuff (buffered) or fedasync (mixing)
    clients_per_unit: int = 10  # async: clients in each piece of work handed out
    buffer_size: int = 4  # fedbuff: updates buffered per server step (K)
    max_staleness: int = 8  # async: updates older than this many versions are refused
    staleness: str = "polynomial"  # async down-weighting: constant, polynomial, hinge
    staleness_a: float = 0.5  # polynomial: (1 + s)^-a (0.5: FedBuff's 1/sqrt(1+s)); hinge: slope
    staleness_b: float = 4.0  # hinge: staleness up to which updates keep full weight
    async_alpha: float = 0.6  # fedasync: mixing weight of a fresh update
    round_deadline_s: float = 0.0  # after this long a round closes with the units in (0: never)
    quorum: int = 0  # units a round needs to close at its deadline (0: all of them)
    model: str = "reference"  # model from the zoo
    model_seed: int = 0  # initial-weights seed

    @property
    def input_divisor(self) -> float:
        return 255.0 if self.normalize else 1.0

    def __post_init__(self):
        problems = []
        if self.rounds < 1:
            problems.append(f"rounds={self.rounds} must be >= 1")
        if self.units < 1:
            problems.append(f"units={self.units} must be >= 1")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if self.weighting not in {w.value for w in Weighting}:
            problems.append(f"weighting={self.weighting!r}: choose uniform or examples")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            problems.append(f"server_optimizer={self.server_optimizer!r}: choose "
                            f"{' or '.join(SERVER_OPTIMIZERS)}")
        if not self.server_lr > 0:
            problems.append(f"server_lr={self.server_lr} must be > 0")
        if self.aggregator not in AGGREGATORS:
            problems.append(f"aggregator={self.aggregator!r}: choose one of "
                            f"{', '.join(AGGREGATORS)}")
        if not 0 <= self.trim_fraction < 0.5:
            problems.append(f"trim_fraction={self.trim_fraction} must be in [0, 0.5)")
        if self.update not in UPDATES:
            problems.append(f"update={self.update!r}: choose gradient or delta")
        if not 0 < self.client_fraction <= 1:
            problems.append(f"client_fraction={self.client_fraction} must be in (0, 1]")
        if self.local_epochs < 1 or self.local_batch_size < 0 or self.client_lr <= 0:
            problems.append("local training needs local_epochs >= 1, local_batch_size >= 0 "
                            "(0: full batch) and client_lr > 0")
        if self.prox_mu < 0 or self.min_clients < 1:
            problems.append("prox_mu must be >= 0 and min_clients >= 1")
        if self.mode not in MODES or self.staleness not in STALENESS:
            problems.append(f"mode={self.mode!r} / staleness={self.staleness!r}: choose a mode "
                            f"of {', '.join(MODES)} and a staleness of {', '.join(STALENESS)}")
        if self.mode != "sync" and (self.buffer_size < 1 or self.clients_per_unit < 1
                                    or self.max_staleness < 0 or not 0 < self.async_alpha <= 1):
            problems.append("async needs buffer_size >= 1, clients_per_unit >= 1, "
                            "max_staleness >= 0 and 0 < async_alpha <= 1")
        if self.mode != "sync" and self.aggregator != "mean":
            problems.append("asynchronous modes aggregate by (staleness-weighted) mean only")
        if not 0 <= self.quorum <= self.units:
            problems.append(f"quorum={self.quorum} must be between 0 (all units) and "
                            f"units={self.units}")
        if self.round_deadline_s < 0:
            problems.append(f"round_deadline_s={self.round_deadline_s} must be >= 0")
        if problems:
            raise ValueError("invalid federation config: " + "; ".join(problems))


def add_federation_arguments(p: argparse.ArgumentParser) -> None:
    d = FederationConfig()
    g = p.add_argument_group("federation (defaults: the reference recipe)")
    g.add_argument("--rounds", type=int, default=d.rounds, help="rounds to train (19 = one pass)")
    g.add_argument("--units", type=int, default=None,
                   help="work units per round (default: the number of workers); equal units "
                        "give bit-identical models in every run mode")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--weighting", choices=[w.value for w in Weighting], default=d.weighting)
    g.add_argument("--update", choices=UPDATES, default=d.update,
                   help="gradient: FedSGD; delta: clients train locally and push w_start - w_end")
    g.add_argument("--local-epochs", type=int, default=d.local_epochs)
    g.add_argument("--local-batch-size", type=int, default=d.local_batch_size,
                   help="local minibatch size (0: a client's whole data)")
    g.add_argument("--client-lr", type=float, default=d.client_lr)
    g.add_argument("--client-momentum", type=float, default=d.client_momentum)
    g.add_argument("--prox-mu", type=float, default=d.prox_mu, help="FedProx coefficient")
    g.add_argument("--client-fraction", type=float, default=d.client_fraction,
                   help="share C of the clients sampled each round (seeded)")
    g.add_argument("--min-clients", type=int, default=d.min_clients)
    g.add_argument("--sampling-seed", type=int, default=d.sampling_seed)
    g.add_argument("--server-optimizer", choices=SERVER_OPTIMIZERS, default=d.server_optimizer)
    g.add_argument("--server-lr", type=float, default=d.server_lr)
    g.add_argument("--server-momentum", type=float, default=d.server_momentum,
                   help="sgd: momentum (FedAvgM)")
    g.add_argument("--server-epsilon", type=float, default=d.server_epsilon,
                   help="adam/adagrad/yogi: epsilon (0: the optimizer's default)")
    g.add_argument("--dropout", action="store_true",
                   help="apply dropout in client training (the reference never does)")
    g.add_argument("--normalize", action="store_true", help="divide pixels by 255")
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="rounds between evaluations (0: after each pass over the data)")
    g.add_argument("--lease-s", type=float, default=d.lease_s,
                   help="seconds a worker may hold a unit before it is given to another")
    g.add_argument("--aggregator", choices=AGGREGATORS, default=d.aggregator,
                   help="mean: weighted mean of fused unit sums; median, trimmed_mean, krum: "
                        "robust, from every client's own update")
    g.add_argument("--trim-fraction", type=float, default=d.trim_fraction)
    g.add_argument("--krum-byzantine", type=int, default=d.krum_byzantine)
    g.add_argument("--krum-select", type=int, default=d.krum_select)
    g.add_argument("--mode", choices=MODES, default=d.mode,
                   help="sync rounds, or asynchronous: fedbuff or fedasync (no round barrier)")
    g.add_argument("--clients-per-unit", type=int, default=d.clients_per_unit,
                   help="async: clients in each piece of work")
    g.add_argument("--buffer-size", type=int, default=d.buffer_size,
                   help="fedbuff: updates per server step (K)")
    g.add_argument("--max-staleness", type=int, default=d.max_staleness,
                   help="async: refuse updates computed more versions ago than this")
    g.add_argument("--staleness", choices=STALENESS, default=d.staleness)
    g.add_argument("--staleness-a", type=float, default=d.staleness_a)
    g.add_argument("--staleness-b", type=float, default=d.staleness_b)
    g.add_argument("--async-alpha", type=float, default=d.async_alpha,
                   help="fedasync: mixing weight of a fresh update")
    g.add_argument("--round-deadline-s", type=float, default=d.round_deadline_s,
                   help="close a round this long after it opened with the units received, "
                        "if at least --quorum (0: wait for every unit)")
    g.add_argument("--quorum", type=int, default=d.quorum,
                   help="units a round needs to close at its deadline (0: all)")
    g.add_argument("--model", default=d.model,
                   help=f"{', '.join(MODELS)}, or package.module:function returning a Keras model")
    g.add_argument("--model-seed", type=int, default=d.model_seed, help="initial-weights seed")


def federation_config_from_args(args: argparse.Namespace, *, workers: int) -> FederationConfig:
    values = {f.name: getattr(args, f.name) for f in fields(FederationConfig)
              if hasattr(args, f.name)}
    values["units"] = args.units or workers
    values["min_workers"] = workers
    return FederationConfig(**values)


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:50051"  # host:port to serve on; port 0 picks a free port
    datapool: str = "127.0.0.1:50052"  # data pool address
    threads: int = 0  # TensorFlow threads (0: TensorFlow's default)
    metrics: str | None = None  # per-round metrics JSONL file
    tensorboard: str | None = None  # TensorBoard event-file folder
    prometheus_port: int | None = None  # serve Prometheus metrics on this port (off: None)
    save_weights: str | None = None  # final weights as .npz
    checkpoint_dir: str | None = None  # resume from / checkpoint into this folder every round
    port_file: str | None = None  # write the bound host:port here once serving
    tls: TlsConfig = field(default_factory=TlsConfig)  # serves and dials the data pool with it
    auth_tokens: str | None = None  # file of `NAME TOKEN` lines; None: no authentication
    auth_token: str | None = None  # token presented to the data pool
    federation: FederationConfig = field(default_factory=FederationConfig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CoordinatorConfig()
    p.add_argument("--listen", default=os.environ.get("FEDSTREAM_COORDINATOR_LISTEN", d.listen))
    p.add_argument("--datapool", default=os.environ.get("FEDSTREAM_DATAPOOL", d.datapool))
    p.add_argument("--workers", type=int, default=1,
                   help="workers to wait for before the first round")
    p.add_argument("--threads", type=int, default=d.threads)
    add_metrics_arguments(p)
    p.add_argument("--prometheus-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (default: off)")
    p.add_argument("--save-weights", default=None, help="save the final weights (.npz) here")
    p.add_argument("--checkpoint-dir", default=None,
                   help="checkpoint every round into this folder; resume from it on start")
    p.add_argument("--port-file", default=None, help="write the bound host:port here when ready")
    add_tls_arguments(p)
    add_server_auth_arguments(p)
    add_client_auth_arguments(p)
    add_federation_arguments(p)


def add_metrics_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", default=None, help="write per-round metrics (JSONL) here")
    p.add_argument("--tensorboard", default=None,
                   help="write per-round metrics as TensorBoard event files to this folder")


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    return CoordinatorConfig(
        listen=args.listen, datapool=args.datapool, threads=args.threads, metrics=args.metrics,
        tensorboard=args.tensorboard, prometheus_port=args.prometheus_port,
        save_weights=args.save_weights, checkpoint_dir=args.checkpoint_dir,
        port_file=args.port_file, tls=tls_from_args(args), auth_tokens=args.auth_tokens,
        auth_token=args.auth_token,
        federation=federation_config_from_args(args, workers=args.workers))


def federation_argv(config: FederationConfig) -> list[str]:
    """The coordinator flags that reproduce `config` (min_workers travels as --workers)."""
    argv = []
    for f in fields(FederationConfig):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "min_workers":
            argv += ["--workers", str(value)]
        elif isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv
