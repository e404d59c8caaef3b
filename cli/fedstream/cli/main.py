"""`fedstream <command>`: argument parsing and dispatch only; the work lives in libraries.

    fedstream run                 # datapool + coordinator + 2 workers as processes, on MNIST
    fedstream simulate            # the same federation in one process, no network
    fedstream datapool | coordinator | worker   # one service, for separate hosts
    fedstream split --sites 3 --out sites/   # one data set as per-site files
    fedstream dp-noise --target-epsilon 3 --clients 1000 --rounds 100 --client-fraction 0.02
    fedstream secagg-keygen --site a --key a.key --peers peers.toml   # a site identity
    fedstream fetch-mnist         # download, verify and cache MNIST
    fedstream status HOST:PORT    # ask a running coordinator where it is
    fedstream health HOST:PORT    # exit 0 when a service reports SERVING
    fedstream plot A/metrics.jsonl B/metrics.jsonl -o runs.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fedstream.common.logs import setup_logging
from fedstream.common.memory import keep_chunk_buffers_in_heap


def _datapool(args) -> int:
    from fedstream.datapool import server
    server.serve(server.config_from_args(args))
    return 0


def _save_resolved(args, path) -> None:
    from pathlib import Path

    from fedstream.cli.config_file import write_resolved
    write_resolved(Path(path), args, args.parser)


def _beside_metrics(args) -> None:
    if args.metrics:
        _save_resolved(args, str(args.metrics).rsplit(".", 1)[0] + ".config.toml")


def _coordinator(args) -> int:
    from fedstream.coordinator import config, server
    _beside_metrics(args)
    server.serve(config.config_from_args(args))
    return 0


def _worker(args) -> int:
    from fedstream.worker import config, main
    main.run(config.config_from_args(args))
    return 0


def _simulate(args) -> int:
    from fedstream.cli import simulate
    _beside_metrics(args)
    simulate.run(simulate.config_from_args(args))
    return 0


def _run(args) -> int:
    from fedstream.cli import local
    config = local.config_from_args(args)
    _save_resolved(args, f"{config.out}/config.toml")
    return local.run(config)


def _fetch_mnist(args) -> int:
    from fedstream.datapool.mnist import fetch_mnist, load_mnist
    path = fetch_mnist(args.to) if args.force or args.to else None
    load_mnist(path)
    print(f"MNIST verified at {path or 'the cache'}")
    return 0


def _plot(args) -> int:
    from fedstream.cli.plot import plot
    print(f"wrote {plot(args.metrics, args.output, log_x=args.log_x, acc_from=args.acc_from)}")
    return 0


def _export(args) -> int:
    """A checkpoint as a Keras model file, optionally evaluated on the MNIST test set."""
    from fedstream.common.learning import model_from_json
    from fedstream.coordinator import checkpoint
    ckpt = checkpoint.load(args.checkpoint_dir)
    if ckpt is None:
        raise ValueError(f"no {checkpoint.FILE_NAME} in {args.checkpoint_dir}")
    model = model_from_json(ckpt.model_json)
    model.set_weights(ckpt.weights)
    model.save(args.output)
    print(f"round {ckpt.round}, version {ckpt.version}: wrote {args.output}")
    if args.evaluate:
        from fedstream.common.learning import evaluate
        from fedstream.common.protocol import input_divisor
        from fedstream.coordinator.build import LOSS
        from fedstream.datapool.mnist import load_mnist
        mnist = load_mnist(args.data)
        print(evaluate(model, mnist.x_test, mnist.y_test, loss=LOSS, num_classes=10,
                       input_divisor=input_divisor(bool(ckpt.config.get("normalize")))))
    return 0


def _make_certs(args) -> int:
    from fedstream.common.tls import make_certificates
    paths = make_certificates(args.directory, args.hosts.split(","), days=args.days)
    print("wrote " + ", ".join(f"{p} ({p.with_suffix('.key').name})" for p in paths.values()))
    return 0


def _health(args) -> int:
    """Exit 0 when the server reports SERVING: for container health checks and people."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedstream.common.clients import channel
    from fedstream.common.options import from_args
    from fedstream.common.tls import TlsConfig
    with channel(args.address, from_args(TlsConfig, args).channel_credentials()) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{args.address}: {e.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _partitions(args) -> int:
    from fedstream.common.options import from_args
    from fedstream.datapool.server import DataConfig, build_store
    print(build_store(from_args(DataConfig, args)).summary.describe(limit=args.show))
    return 0


def _split(args) -> int:
    """Per-site files of one data set, by a partitioner or by a group array it carries."""
    import numpy as np

    from fedstream.common.options import from_args
    from fedstream.datapool.server import DataConfig, load_data
    from fedstream.datapool.sites import SiteSplitConfig, split_by_group, split_sites, write_sites
    data_config = from_args(DataConfig, args)
    data = load_data(data_config)
    if args.by:
        with np.load(data_config.data, allow_pickle=False) as d:
            sites = split_by_group(data, d[args.by], d[f"{args.by}_test"])
    else:
        split = from_args(SiteSplitConfig, args)
        if split.sites < 1:
            raise SystemExit("split: give --sites N (or --by GROUP_ARRAY)")
        sites = split_sites(data, split)
    for site, path in zip(sites, write_sites(sites, args.out)):
        print(f"{path}: {len(site.y_train)} training, {len(site.y_test)} held-out examples, "
              f"labels {np.bincount(site.y_train, minlength=data.num_classes).tolist()}")
    return 0


def _dp_noise(args) -> int:
    """The noise multiplier for a privacy target, from the accountant the runs use."""
    from fedstream.common.options import from_args
    from fedstream.coordinator.accounting import RoundRelease, epsilon, noise_for
    from fedstream.coordinator.config import FederationConfig
    config = from_args(FederationConfig, args, dp_clip=1.0)  # epsilon does not depend on C
    multiplier = noise_for(args.target_epsilon, config, args.clients, config.rounds)
    release = RoundRelease.of(config, args.clients, multiplier, seeded=False)
    reached = epsilon([release] * config.rounds, config.dp_delta, config.dp_accountant)
    print(json.dumps({"noise_multiplier": multiplier, "epsilon": reached,
                      "delta": config.dp_delta, "rounds": config.rounds,
                      "clients": args.clients, "client_fraction": config.client_fraction,
                      "sampling": config.sampling.value,
                      "accountant": config.dp_accountant.value}))
    return 0


def _secagg_keygen(args) -> int:
    from fedstream.common.identity import make_identity
    public = make_identity(args.site, args.key, args.peers)
    print(json.dumps({"site": args.site, "key": args.key, "peers": args.peers,
                      "public_key": public.hex()}))
    return 0


def _status(args) -> int:
    import dataclasses

    from fedstream.common.auth import ClientCredentials
    from fedstream.common.clients import CoordinatorClient
    from fedstream.common.options import from_args
    credentials = from_args(ClientCredentials, args)
    client = CoordinatorClient(args.address, connect_timeout_s=10.0, tls=credentials.tls,
                               token=credentials.auth_token)
    if args.evaluate:
        version, metrics = client.evaluate()
        print(json.dumps({"version": version, **metrics}))
    else:
        print(json.dumps(dataclasses.asdict(client.status()), indent=2))
    client.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fedstream.cli import local, simulate
    from fedstream.coordinator import config as coordinator
    from fedstream.datapool import server as datapool
    from fedstream.worker import config as worker

    parser = argparse.ArgumentParser(prog="fedstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = [
        ("run", "a local federation: datapool, coordinator and workers as processes",
         local.add_arguments, _run),
        ("simulate", "the same federation in one process without a network",
         simulate.add_arguments, _simulate),
        ("datapool", "serve client batches", datapool.add_arguments, _datapool),
        ("coordinator", "serve the center model", coordinator.add_arguments, _coordinator),
        ("worker", "compute client updates", worker.add_arguments, _worker),
    ]
    for name, help_text, add_arguments, handler in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=None,
                       help="TOML experiment file of this command's flags; flags given here win")
        add_arguments(p)
        p.set_defaults(handler=handler, parser=p)
    p = sub.add_parser("fetch-mnist", help="download, verify and cache MNIST")
    p.add_argument("--to", default=None, help="write mnist.npz here instead of the cache")
    p.add_argument("--force", action="store_true", help="download even if cached")
    p.set_defaults(handler=_fetch_mnist)
    from fedstream.cli import plot
    from fedstream.common.auth import ClientCredentials
    from fedstream.common.options import add_options
    from fedstream.common.tls import TlsConfig
    p = sub.add_parser("plot", help="accuracy and loss of one or more runs, as a PNG")
    plot.add_arguments(p)
    p.set_defaults(handler=_plot)
    p = sub.add_parser("export", help="a coordinator checkpoint as a Keras model file")
    p.add_argument("checkpoint_dir")
    p.add_argument("output", help="e.g. model.keras")
    p.add_argument("--evaluate", action="store_true", help="print its MNIST test accuracy")
    p.add_argument("--data", default=None, help="MNIST npz or IDX folder (default: the cache)")
    p.set_defaults(handler=_export)
    p = sub.add_parser("make-certs", help="a throwaway CA, server and client certificates")
    p.add_argument("directory")
    p.add_argument("--hosts", default="127.0.0.1,localhost",
                   help="comma-separated names and addresses the server certificate is for")
    p.add_argument("--days", type=int, default=30)
    p.set_defaults(handler=_make_certs)
    p = sub.add_parser("partitions", help="the clients' sizes and label histograms of a partition")
    add_options(p, datapool.DataConfig)
    p.add_argument("--show", type=int, default=10, help="clients listed in full")
    p.set_defaults(handler=_partitions)
    from fedstream.datapool.sites import SiteSplitConfig
    p = sub.add_parser("split", help="one data set as per-site files, for a federation of "
                                     "data sites")
    add_options(p, datapool.DataConfig, only=(
        "data", "data_format", "x_key", "y_key", "x_test_key", "y_test_key", "num_classes",
        "clients", "partitioner", "data_seed", "synthetic_alpha", "synthetic_beta",
        "synthetic_iid"))  # synthetic data is generated for --clients devices
    add_options(p, SiteSplitConfig)
    p.add_argument("--by", default=None, help="split by the group array of this name in the "
                                              "--data .npz (and <name>_test for the held-out "
                                              "examples), one site per value")
    p.add_argument("--out", required=True, help="folder for the <site>.npz files")
    p.set_defaults(handler=_split)
    from fedstream.coordinator.config import FederationConfig
    p = sub.add_parser("dp-noise", help="the noise multiplier that keeps a run within a "
                                        "privacy target (epsilon at --dp-delta)")
    p.add_argument("--target-epsilon", type=float, required=True)
    p.add_argument("--clients", type=int, required=True, help="clients in the federation")
    add_options(p, FederationConfig, only=("rounds", "client_fraction", "min_clients",
                                           "sampling", "dp_delta", "dp_accountant"))
    p.set_defaults(handler=_dp_noise)
    p = sub.add_parser("secagg-keygen", help="a site's Ed25519 identity for secure "
                                             "aggregation: the private key for its workers, "
                                             "its public key into the peers file")
    p.add_argument("--site", required=True, help="the site's name (its workers' --site)")
    p.add_argument("--key", required=True, help="where to write the private key (PEM, 0600; "
                                                "never overwritten)")
    p.add_argument("--peers", required=True, help="the peers file to add the public key to")
    p.set_defaults(handler=_secagg_keygen)
    p = sub.add_parser("health", help="exit 0 when a server reports SERVING (grpc.health.v1)")
    p.add_argument("address", help="host:port")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.add_argument("--timeout", type=float, default=5.0)
    add_options(p, TlsConfig)
    p.set_defaults(handler=_health)
    p = sub.add_parser("status", help="a running coordinator's round, version and workers")
    p.add_argument("address", help="coordinator host:port")
    p.add_argument("--evaluate", action="store_true",
                   help="evaluate the current model on the test set now and print that")
    add_options(p, ClientCredentials)
    p.set_defaults(handler=_status)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse, reading `--config` first: its flags go right after the command, so the ones
    on the command line, which come later, override them."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from fedstream.cli.config_file import config_argv
        at = argv.index(args.command) + 1
        argv = [*argv[:at], *config_argv(args.config, args.parser, args.command), *argv[at:]]
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    keep_chunk_buffers_in_heap()
    from fedstream.cli.config_file import ConfigError
    try:
        args = parse(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as e:
        print(f"fedstream: error: {e}", file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the last line of defence: one readable line, details at DEBUG
        from fedstream.common.errors import FedstreamError
        from fedstream.datapool.mnist import DatasetError
        if isinstance(e, (FedstreamError, DatasetError, ValueError, OSError, RuntimeError)):
            logging.getLogger("fedstream").debug("details", exc_info=True)
            print(f"fedstream {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
