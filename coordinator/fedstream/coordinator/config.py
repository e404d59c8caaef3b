"""Coordinator configuration, declared once: each field's type, default, help and choices;
flags, experiment-file keys and the resolved config derive from it (`fedstream.common.options`).
No TensorFlow here, so the CLI parses arguments without loading it."""

from __future__ import annotations

import argparse
import dataclasses
import enum
from dataclasses import dataclass

from fedstream.common.auth import auth_token_option, auth_tokens_option
from fedstream.common.backend import backend_option, threads_option
from fedstream.common.codecs import Encoding
from fedstream.common.options import add_options, coerce_choices, from_args, option, section
from fedstream.common.protocol import UpdateKind, Weighting, input_divisor
from fedstream.common.tls import TlsConfig
from fedstream.coordinator.sites import SITE_NAME

MODELS = ("reference", "2nn", "cnn", "logistic")  # or package.module:function
WEIGHTS_ENCODINGS = tuple(e.value for e in (Encoding.RAW, Encoding.FLOAT16, Encoding.BFLOAT16))


class Aggregator(str, enum.Enum):
    """The rules of fedstream.coordinator.aggregation.RULES (one name each)."""
    MEAN = "mean"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"


class ServerOptimizer(str, enum.Enum):
    """See fedstream.coordinator.optimizers."""
    SGD = "sgd"
    ADAM = "adam"
    ADAGRAD = "adagrad"
    YOGI = "yogi"


class Mode(str, enum.Enum):
    SYNC = "sync"
    FEDBUFF = "fedbuff"
    FEDASYNC = "fedasync"


class PartialWorkPolicy(str, enum.Enum):
    DROP = "drop"  # FedAvg: a straggler's update never arrives
    KEEP = "keep"  # FedProx: a straggler's partial update counts


class Sampling(str, enum.Enum):
    FIXED = "fixed"  # max(min_clients, round(C * N)) clients, without replacement
    POISSON = "poisson"  # every client independently with probability C


class Accountant(str, enum.Enum):
    RDP = "rdp"
    PLD = "pld"


class Staleness(str, enum.Enum):
    CONSTANT = "constant"
    POLYNOMIAL = "polynomial"
    HINGE = "hinge"


@dataclass(frozen=True)
class RoundsConfig:
    """Rounds: how many, their units and workers, the sites they wait for, what a round's
    clients compute, when a round closes."""
    rounds: int = option(57, "rounds to train (19 = one pass over the reference's client data)")
    units: int = option(0, "work units per round (0: one per worker the first round waits "
                           "for); equal units give bit-identical models in every run mode")
    min_workers: int = option(1, "workers that must join before the first round opens")
    sites: str = option("", "data sites the first round waits for, comma-separated; their "
                            "order numbers their clients. Empty: the coordinator reads one data "
                            "pool. With sites, --units counts per site (0: min_workers / sites)")
    batch_size: int = option(32, "client batch size")
    weighting: Weighting = option(Weighting.UNIFORM, "client weight in the mean: uniform "
                                  "(the reference's plain mean) or its number of examples")
    update: UpdateKind = option(UpdateKind.GRADIENT, "gradient: FedSGD; delta: clients train "
                                "locally and push w_start - w_end (the FedAvg family)")
    dropout: bool = option(False, "apply dropout in client training (the reference never does)")
    normalize: bool = option(False, "divide pixels by 255 (the reference feeds raw 0..255)")
    eval_every: int = option(0, "rounds between test evaluations (0: after each pass over "
                                "the data)")
    lease_s: float = option(120.0, "seconds a worker may hold a unit before it is given to "
                                   "another")
    mode: Mode = option(Mode.SYNC, "sync rounds, or asynchronous: fedbuff (buffered) or "
                                   "fedasync (mixing), no round barrier")
    round_deadline_s: float = option(0.0, "close a round this long after it opened with the "
                                          "units received, if at least --quorum (0: never)")
    quorum: int = option(0, "units a round needs to close at its deadline (0: all)")
    rejoin_wait_s: float = option(30.0, "resumed from a checkpoint: wait this long for "
                                        "--min-workers to be back, then go on with those that are")
    eval_timeout_s: float = option(120.0, "sites: how long an evaluation waits for the sites' "
                                          "reports; a site later than that is left out of "
                                          "that round's row")

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.sites.split(",") if name.strip())

    @property
    def input_divisor(self) -> float:
        return input_divisor(self.normalize)

    def __post_init__(self):
        if self.units == 0:
            object.__setattr__(self, "units",
                               max(1, self.min_workers // max(1, len(self.site_names))))


def round_rules(c: FederationConfig) -> list[str]:
    """Rounds, sites, units, clients, deadlines."""
    problems = []
    if len(set(c.site_names)) != len(c.site_names):
        problems.append(f"sites={c.sites!r} names a site twice")
    bad = [name for name in c.site_names if not SITE_NAME.fullmatch(name)]
    if bad:
        problems.append(f"site names {bad} must be 1 to 64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    if c.rounds < 1:
        problems.append(f"rounds={c.rounds} must be >= 1")
    if c.units < 1 or c.min_workers < 1:
        problems.append(f"units={c.units} and min_workers={c.min_workers} must be >= 1")
    if c.batch_size < 1:
        problems.append(f"batch_size={c.batch_size} must be >= 1")
    if not c.server_lr > 0:
        problems.append(f"server_lr={c.server_lr} must be > 0")
    if not 0 < c.client_fraction <= 1:
        problems.append(f"client_fraction={c.client_fraction} must be in (0, 1]")
    if c.local_epochs < 1 or c.local_batch_size < 0 or c.client_lr <= 0:
        problems.append("local training needs local_epochs >= 1, local_batch_size >= 0 "
                        "(0: full batch) and client_lr > 0")
    if c.prox_mu < 0 or c.min_clients < 1:
        problems.append("prox_mu must be >= 0 and min_clients >= 1")
    if not 0 <= c.quorum <= c.units * max(1, len(c.site_names)):
        problems.append(f"quorum={c.quorum} must be between 0 (all units) and the "
                        f"units of a round ({c.units} per site)")
    if c.round_deadline_s < 0 or c.rejoin_wait_s < 0:
        problems.append(f"round_deadline_s={c.round_deadline_s} and rejoin_wait_s="
                        f"{c.rejoin_wait_s} must be >= 0")
    return problems


@dataclass(frozen=True)
class SamplingConfig:
    """Which clients a round (or an asynchronous unit) asks for."""
    client_fraction: float = option(1.0, "share C of the clients sampled each round (seeded)")
    min_clients: int = option(1, "sample at least this many clients per round")
    sampling_seed: int = option(0, "seeds the client sample of each round or unit (under "
                                   "client-level DP the sample is drawn from the OS's CSPRNG)")
    sampling: Sampling = option(Sampling.FIXED, "fixed: max(min_clients, C*N) clients without "
                                "replacement; poisson: each client with probability C (what "
                                "the DP accountant's Poisson event assumes)")


@dataclass(frozen=True)
class LocalTrainingConfig:
    """Local training (--update delta): the FedAvg family and FedProx, and stragglers'
    partial work."""
    local_epochs: int = option(1, "delta: local passes over each client's data")
    local_batch_size: int = option(10, "delta: local minibatch size (0: a client's whole data)")
    client_lr: float = option(0.1, "delta: the clients' SGD learning rate")
    client_momentum: float = option(0.0, "delta: the clients' SGD momentum (fresh per client)")
    prox_mu: float = option(0.0, "delta: FedProx proximal coefficient (0: FedAvg)")
    partial_work: float = option(0.0, "delta, systems heterogeneity (the FedProx paper): this "
                                      "share of each round's sampled clients are stragglers "
                                      "that manage only a uniformly random 1..E-1 of their E "
                                      "local epochs (seeded by --sampling-seed and the round)")
    partial_work_policy: PartialWorkPolicy = option(
        PartialWorkPolicy.DROP, "what becomes of the stragglers: drop (FedAvg: left out of "
        "the round) or keep (FedProx: their partial updates count)")


def partial_work_rules(c: FederationConfig) -> list[str]:
    """Partial work: local training's, in sync rounds, and not under DP."""
    if not c.partial_work:
        return []
    problems = []
    if not 0 <= c.partial_work <= 1:
        problems.append(f"partial_work={c.partial_work} must be a share in [0, 1]")
    if c.update is not UpdateKind.MODEL_DELTA or c.mode is not Mode.SYNC:
        problems.append("partial work is local training's: give --update delta, in sync "
                        "rounds")
    if c.partial_work_policy is PartialWorkPolicy.KEEP and c.local_epochs < 2:
        problems.append("--partial-work-policy keep needs --local-epochs >= 2: a straggler "
                        "does 1 to E-1 epochs")
    if c.dp_clip > 0:
        problems.append("partial work with client-level DP: dropping stragglers changes "
                        "the sample the accountant assumes; use one or the other")
    return problems


@dataclass(frozen=True)
class AggregationConfig:
    """The aggregation rule (`fedstream.coordinator.aggregation.RULES`) and its knobs."""
    aggregator: Aggregator = option(Aggregator.MEAN, "mean: weighted mean of fused unit sums; "
                                    "median, trimmed_mean, krum: robust, from every client's "
                                    "own update")
    trim_fraction: float = option(0.1, "trimmed_mean: share of values dropped at each end")
    krum_byzantine: int = option(1, "krum: the number f of faulty clients tolerated")
    krum_select: int = option(1, "krum: average this many best-scored updates (Multi-Krum "
                                 "when > 1)")


def aggregation_rules(c: FederationConfig) -> list[str]:
    """The aggregator and the asynchronous modes."""
    problems = []
    if not 0 <= c.trim_fraction < 0.5:
        problems.append(f"trim_fraction={c.trim_fraction} must be in [0, 0.5)")
    if c.mode != Mode.SYNC and (c.buffer_size < 1 or c.clients_per_unit < 1
                                or c.max_staleness < 0 or not 0 < c.async_alpha <= 1):
        problems.append("async needs buffer_size >= 1, clients_per_unit >= 1, "
                        "max_staleness >= 0 and 0 < async_alpha <= 1")
    if c.mode != Mode.SYNC and c.aggregator != Aggregator.MEAN:
        problems.append("asynchronous modes aggregate by (staleness-weighted) mean only")
    return problems


@dataclass(frozen=True)
class AsyncConfig:
    """FedBuff and FedAsync: units, the buffer, staleness."""
    clients_per_unit: int = option(10, "async: clients in each piece of work")
    buffer_size: int = option(4, "fedbuff: updates buffered per server step (K)")
    max_staleness: int = option(8, "async: refuse updates computed more versions ago")
    staleness: Staleness = option(Staleness.POLYNOMIAL, "async down-weighting of stale "
                                  "updates")
    staleness_a: float = option(0.5, "polynomial: (1 + s)^-a (0.5: FedBuff's 1/sqrt(1+s)); "
                                     "hinge: slope")
    staleness_b: float = option(4.0, "hinge: staleness up to which updates keep full weight")
    async_alpha: float = option(0.6, "fedasync: mixing weight of a fresh update")


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy."""
    dp_clip: float = option(0.0, "client-level differential privacy: clip every client's "
                                 "update to this L2 norm (0: off)")
    dp_noise_multiplier: float = option(0.0, "DP: Gaussian noise of standard deviation "
                                             "multiplier * clip on the sum of clipped updates")
    dp_delta: float = option(1e-5, "DP: the delta the accountant reports epsilon at")
    dp_target_epsilon: float = option(0.0, "DP: end training before a round would take "
                                           "epsilon past this (0: no limit)")
    dp_target_quantile: float = option(0.0, "DP, adaptive clipping (Andrew et al. 2021): the "
                                            "clip follows this quantile of the clients' update "
                                            "norms, estimated privately (0: --dp-clip fixed)")
    dp_clip_lr: float = option(0.2, "adaptive clipping: the clip's geometric learning rate")
    dp_quantile_noise: float = option(0.0, "adaptive clipping: standard deviation of the "
                                           "noise on the count of unclipped clients (0: "
                                           "expected clients per round / 20)")
    dp_accountant: Accountant = option(Accountant.RDP, "DP: rdp or pld (dp-accounting)")
    dp_release_metrics: bool = option(False, "DP: also publish what is computed from the "
                                      "clients' data without noise (training loss, sample "
                                      "sizes, worker reports, per-site tables and "
                                      "evaluations); these are outside the DP guarantee")
    dp_resume_without_privacy: bool = option(False, "resume a checkpoint written under DP "
                                             "without DP: its later rounds are not private")
    privacy_research_seed: int | None = option(None, "research only, NOT private: seeds the "
                                               "DP noise, the client sample under DP and the "
                                               "clip's count noise so runs repeat; every "
                                               "epsilon then says 'not private: seeded'. "
                                               "Unset, they come from the OS's CSPRNG")

    @property
    def private(self) -> bool:
        """Client-level DP is on: updates are clipped per client."""
        return self.dp_clip > 0


def privacy_rules(c: FederationConfig) -> list[str]:
    """Client-level DP, and what it cannot account for (compressed updates, PLD over
    fixed-size samples)."""
    problems = []
    if c.dp_clip < 0 or c.dp_noise_multiplier < 0 or not 0 < c.dp_delta < 1:
        problems.append("dp_clip and dp_noise_multiplier must be >= 0, dp_delta in (0, 1)")
    if c.dp_noise_multiplier > 0 and c.dp_clip == 0:
        problems.append("DP noise needs --dp-clip: the noise is scaled to the clip")
    if c.dp_clip > 0 and (c.mode is not Mode.SYNC or c.aggregator is not Aggregator.MEAN
                          or c.weighting is not Weighting.UNIFORM):
        problems.append("client-level DP needs synchronous rounds, the mean aggregator and "
                        "uniform weighting (every client's clipped update weighs 1)")
    if not 0 <= c.dp_target_quantile < 1 or c.dp_clip_lr <= 0:
        problems.append("dp_target_quantile must be in [0, 1) and dp_clip_lr > 0")
    if c.dp_target_quantile and not c.dp_noise_multiplier:
        problems.append("adaptive clipping estimates the quantile privately: it needs "
                        "--dp-noise-multiplier")
    if c.dp_target_epsilon < 0:
        problems.append("dp_target_epsilon must be >= 0")
    if c.dp_clip > 0 and c.update_encoding is not Encoding.RAW:
        problems.append(f"client-level DP needs raw updates: {c.update_encoding.value} "
                        "rounding or error feedback changes what a client adds after "
                        "clipping, which the accountant does not cover")
    if (c.dp_noise_multiplier > 0 and c.dp_accountant is Accountant.PLD
            and c.client_fraction < 1 and c.sampling is Sampling.FIXED):
        problems.append("the PLD accountant does not cover fixed-size sampling without "
                        "replacement: use --sampling poisson or --dp-accountant rdp")
    if c.secure_aggregation and c.dp_noise_multiplier > 0 \
            and c.dp_accountant is Accountant.PLD:
        problems.append("with secure aggregation the parties' Skellam noise is accounted "
                        "by RDP: use --dp-accountant rdp")
    if c.privacy_research_seed is not None and not c.private:
        problems.append("privacy_research_seed seeds DP randomness: it needs --dp-clip")
    return problems


@dataclass(frozen=True)
class SecureAggregationConfig:
    """Secure aggregation."""
    secure_aggregation: bool = option(False, "secure aggregation (Bonawitz et al. 2017): "
                                      "each unit is a party whose update travels masked, and "
                                      "the coordinator learns only the sum of a round's "
                                      "units; needs a worker per unit")
    secagg_threshold: float = option(0.6, "secure aggregation: any ceil(this * parties) (at "
                                          "least 2) parties recover a dropped party's masks; "
                                          "a round with fewer survivors is abandoned")
    secagg_colluders: int = option(0, "secure aggregation: parties that may collude with "
                                      "the coordinator; the threshold stays above (parties "
                                      "+ this) / 2, and with DP each party's noise is sized "
                                      "so that the others' alone reach z * C")
    secagg_neighbours: int = option(0, "secure aggregation, SecAgg+ (Bell et al. 2020): each "
                                       "party shares with and masks against this many others "
                                       "(even; a Harary graph), so its cost grows with this "
                                       "rather than with the parties; about 2 log2(parties) "
                                       "or more. 0: every other party")
    secagg_range: float = option(64.0, "secure aggregation: bound on each value of one "
                                       "client's update per unit of its weight (with DP: "
                                       "the clip); values beyond it saturate")
    secagg_bits: int = option(0, "secure aggregation: fixed-point precision, values as "
                                 "round(x * 2^bits); 0 or more than the ring holds: the most "
                                 "that keeps a round's sum in 2^32")
    secagg_timeout_s: float = option(60.0, "secure aggregation: a phase closes this long "
                                           "after it opened with the parties that answered")


def secure_aggregation_rules(c: FederationConfig) -> list[str]:
    """Secure aggregation: what it can sum, its threshold and ring."""
    problems = []
    if c.secure_aggregation and (
            c.mode is not Mode.SYNC or c.aggregator is not Aggregator.MEAN
            or c.update_encoding is not Encoding.RAW or c.dp_target_quantile):
        problems.append("secure aggregation sums the units of synchronous rounds: it needs "
                        "the mean aggregator, raw updates and a fixed --dp-clip")
    if not 0.5 < c.secagg_threshold <= 1 or c.secagg_range <= 0 \
            or c.secagg_timeout_s <= 0 or not 0 <= c.secagg_bits <= 30 \
            or c.secagg_colluders < 0 or c.secagg_neighbours < 0 \
            or c.secagg_neighbours % 2:
        problems.append("secagg_threshold must be in (0.5, 1] (a coordinator that tells "
                        "two halves of the parties different survivors must never reach "
                        "the threshold with both), secagg_range and "
                        "secagg_timeout_s > 0, secagg_bits in [0, 30], secagg_colluders "
                        ">= 0, secagg_neighbours even and >= 0")
    return problems


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """The server optimizer that applies each aggregate."""
    server_optimizer: ServerOptimizer = option(ServerOptimizer.ADAM,
                                               "sgd (FedAvg, FedAvgM), adam, adagrad, yogi")
    server_lr: float = option(1e-4, "server learning rate (the reference: Adam 1e-4)")
    server_momentum: float = option(0.0, "sgd: momentum (FedAvgM)")
    server_epsilon: float = option(0.0, "adam, adagrad, yogi: epsilon (tau); 0: the "
                                        "optimizer's default")


@dataclass(frozen=True)
class ModelConfig:
    """The model every client trains."""
    model: str = option("reference", f"{', '.join(MODELS)}, or package.module:function "
                                      "returning a Keras model")
    model_seed: int = option(0, "initial-weights seed")
    model_input_shape: str = option("", "the example shape the built-in models take, e.g. 60 "
                                        "or 28,28 (default: the data pool's; 28,28 for a "
                                        "federation of sites)")


@dataclass(frozen=True)
class EncodingConfig:
    """How updates and weights travel."""
    update_encoding: Encoding = option(Encoding.RAW, "how workers send updates: raw "
                                       "float32, float16, bfloat16, int8 (a scale per "
                                       "tensor), int8-block (a scale per 256 values; both "
                                       "rounded stochastically) or topk (with error feedback)")
    topk_fraction: float = option(0.01, "topk: the share of each tensor's values sent")
    weights_encoding: Encoding = option(Encoding.RAW, "how workers receive the weights (whole "
                                        "versions, and with --weights-delta the changes): "
                                        "raw, float16 or bfloat16",
                                        choices=WEIGHTS_ENCODINGS)
    weights_delta: bool = option(False, "send a worker holding the previous version only the "
                                        "change, in --weights-encoding")


def compression_rules(c: FederationConfig) -> list[str]:
    """Update encodings."""
    problems = []
    if not 0 < c.topk_fraction <= 1:
        problems.append(f"topk_fraction={c.topk_fraction} must be in (0, 1]")
    return problems


# every cross-feature rule of a federation config, beside the section it relates to: a new
# feature adds its own
CHECKS = (round_rules, aggregation_rules, partial_work_rules, privacy_rules,
          secure_aggregation_rules, compression_rules)


@dataclass(frozen=True, init=False)
class FederationConfig:
    """What the coordinator is told, one section per part: each part is given its own
    (`config.privacy`, `config.secagg`, `config.server`, ...). Flags and experiment-file keys
    are the sections' fields, flat, so a flag means one thing everywhere; a knob also reads
    flat (`config.dp_clip`), and a config is built from flat values
    (`FederationConfig(rounds=3, dp_clip=1.0)`), from sections, or both."""

    schedule: RoundsConfig = section(RoundsConfig)
    client_sampling: SamplingConfig = section(SamplingConfig)
    local: LocalTrainingConfig = section(LocalTrainingConfig)
    aggregation: AggregationConfig = section(AggregationConfig)
    asynchronous: AsyncConfig = section(AsyncConfig)
    privacy: PrivacyConfig = section(PrivacyConfig)
    secagg: SecureAggregationConfig = section(SecureAggregationConfig)
    server: ServerOptimizerConfig = section(ServerOptimizerConfig)
    net: ModelConfig = section(ModelConfig)
    encodings: EncodingConfig = section(EncodingConfig)

    def __init__(self, **values):
        for name, kind in _SECTIONS.items():
            given = values.pop(name, None)
            own = {k: values.pop(k) for k in _FIELDS[name] if k in values}
            part = kind(**own) if given is None else dataclasses.replace(given, **own)
            object.__setattr__(self, name, part)
        if values:
            raise TypeError(f"FederationConfig has no option {', '.join(sorted(values))}")
        self.__post_init__()

    def __getattr__(self, name: str):
        """A knob by its flat name, from the section that declares it."""
        owner = _OWNER.get(name)
        if owner is None:
            raise AttributeError(f"FederationConfig has no option {name!r}")
        return getattr(object.__getattribute__(self, owner), name)

    def flat(self) -> dict:
        """Every knob by its flat name (a checkpoint's record of the config)."""
        return {k: v for name in _SECTIONS
                for k, v in dataclasses.asdict(getattr(self, name)).items()}

    def __post_init__(self):
        problems = [p for name in _SECTIONS for p in coerce_choices(getattr(self, name))]
        if not problems:
            for rule in CHECKS:
                problems += rule(self)
        if problems:
            raise ValueError("invalid federation config: " + "; ".join(problems))


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(FederationConfig)}
_FIELDS = {name: {f.name for f in dataclasses.fields(kind)} for name, kind in _SECTIONS.items()}
_OWNER = {k: name for name, kind in _SECTIONS.items()
          for k in [*_FIELDS[name], *(a for a, v in vars(kind).items()
                                      if isinstance(v, property))]}
assert not set(_SECTIONS) & set(_OWNER), "a section is named like a knob: its flat read breaks"


@dataclass(frozen=True)
class MetricsConfig:
    """Where per-round metrics go, besides the log."""
    metrics: str | None = option(None, "write per-round metrics (JSONL) here")
    tensorboard: str | None = option(None, "write per-round metrics as TensorBoard event "
                                           "files to this folder")
    prometheus_port: int | None = option(None, "serve Prometheus metrics on this port "
                                               "(default: off)")


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = option("127.0.0.1:50051", "host:port to serve on (port 0: any free port)",
                         env="FEDSTREAM_COORDINATOR_LISTEN")
    datapool: str = option("127.0.0.1:50052", "data pool address (not read with --sites)",
                           env="FEDSTREAM_DATAPOOL")
    num_classes: int = option(10, "with --sites: the classes of the task (one data pool: "
                                  "the pool says)")
    backend: str | None = backend_option()
    threads: int = threads_option()
    sinks: MetricsConfig = section(MetricsConfig)
    save_weights: str | None = option(None, "save the final weights (.npz) here")
    checkpoint_dir: str | None = option(None, "checkpoint every round into this folder; "
                                              "resume from it on start")
    port_file: str | None = option(None, "write the bound host:port here when ready")
    tls: TlsConfig = section(TlsConfig, "TLS (default: plaintext)")  # serves, and dials the pool
    auth_tokens: str | None = auth_tokens_option()
    auth_token: str | None = auth_token_option()  # presented to the data pool
    federation: FederationConfig = section(FederationConfig,
                                           "federation (defaults: the reference recipe)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, CoordinatorConfig)


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    return from_args(CoordinatorConfig, args)
