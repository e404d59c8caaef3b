"""The coordinator's parts on their own: aggregation stages on tiny arrays (each stage's
state explicit), the server model's pinned snapshots, validation as pure functions."""

import numpy as np
import pytest

from fedstream.common.errors import InvalidArgument, PermissionDenied
from fedstream.common.protocol import UpdateMeta
from fedstream.common.tensors import TensorSpec
from fedstream.coordinator.aggregation import RULES, RoundContext, rule_of
from fedstream.coordinator.aggregation.mean import WeightedMean
from fedstream.coordinator.aggregation.robust import Krum, Median, PerClient, TrimmedMean
from fedstream.coordinator.aggregation.staleness import StalenessWeighted
from fedstream.coordinator.config import Aggregator, FederationConfig
from fedstream.coordinator.server_model import ServerModel
from fedstream.coordinator.units import Contribution, Unit
from fedstream.coordinator.validation import check_claim, check_specs, check_weight, expected_specs

from conftest import tiny_model


def c(values, weight, clients=1, factor=1.0):
    return Contribution([np.array(values, np.float32)], weight, clients, 1,
                        staleness_factor=factor)


def step(stage, contributions):
    """One step from the stage's initial state: (result, measurements)."""
    out = stage.next(stage.init(), contributions, RoundContext(version=1))
    return out.result, out.measurements


def test_weighted_mean_divides_the_sum_of_sums_by_the_total_weight():
    (mean,), _ = step(WeightedMean(), [c([2.0, 4.0], 2.0), c([1.0, 1.0], 1.0)])
    np.testing.assert_allclose(mean, [1.0, 5.0 / 3.0])


def test_staleness_weighting_scales_updates_but_not_their_weights():
    (mean,), _ = step(StalenessWeighted(WeightedMean()), [c([2.0], 2.0, factor=0.5),
                                                          c([4.0], 2.0)])
    np.testing.assert_allclose(mean, [(0.5 * 2.0 + 4.0) / 4.0])


def test_per_client_rules_see_clients_in_unit_then_client_order():
    seen = []

    class Recording(PerClient):
        def rule(self, updates):
            seen.extend(float(u[0][0]) for u in updates)
            return updates[0]

    stacked = [Contribution([np.array([[1.0], [2.0]], np.float32)], 2.0, 2, 1),
               Contribution([np.array([[3.0]], np.float32)], 1.0, 1, 1)]
    step(Recording(), stacked)
    assert seen == [1.0, 2.0, 3.0]


def clients(*values):
    """One unit per value list: its clients' own one-coordinate updates, stacked."""
    return [Contribution([np.array([[v] for v in vs], np.float32)], float(len(vs)), len(vs), 1)
            for vs in values]


def test_the_robust_rules_on_tiny_arrays():
    units = clients([1.0, 2.0, 100.0], [3.0, 4.0])
    (median,), _ = step(Median(), units)
    assert median.tolist() == [3.0]
    (trimmed,), _ = step(TrimmedMean(0.2), units)  # one dropped from each end of five
    assert trimmed.tolist() == [3.0]
    (krum,), _ = step(Krum(byzantine=1, select=1), units)  # the outlier is never chosen
    assert krum.tolist()[0] in (2.0, 3.0)


@pytest.mark.parametrize("settings, kind", [
    (dict(), WeightedMean), (dict(aggregator="median"), Median),
    (dict(aggregator="trimmed_mean"), TrimmedMean), (dict(aggregator="krum"), Krum),
    (dict(mode="fedbuff"), StalenessWeighted)])
def test_the_configuration_picks_the_stage(settings, kind):
    assert type(rule_of(FederationConfig(**settings))) is kind


def test_every_rule_the_config_names_is_registered():
    assert set(RULES) == {a.value for a in Aggregator}
    assert not WeightedMean().per_client and Median().per_client


def test_a_stateless_stage_keeps_no_state_and_saves_none():
    stage = rule_of(FederationConfig(mode="fedbuff"))
    out = stage.next(stage.init(), [c([1.0], 1.0)], RoundContext(1))
    assert out.state is None and stage.save(out.state) == {} and stage.load({}) is None
    assert out.measurements == {} and not out.stop


def test_every_version_keeps_a_read_only_snapshot():
    config = FederationConfig(server_optimizer="sgd", server_lr=1.0)
    server = ServerModel(tiny_model(), config.server, config.encodings)
    first = server.weights
    with pytest.raises(ValueError):
        first[0][0, 0] = 5.0
    server.apply([np.ones(v.shape, np.float32) for v in server.trainable])
    assert server.version == 2
    np.testing.assert_allclose(server.weights[0], first[0] - 1.0)  # the old snapshot kept its values


def test_validation_is_pure_and_names_the_problem():
    meta = UpdateMeta("w1", 1, 1, 0, (3, 4), 2.0, 10)
    unit = Unit(0, (3, 4), leased_to="w2")
    with pytest.raises(PermissionDenied, match="leased to another worker"):
        check_claim(meta, unit)
    with pytest.raises(InvalidArgument, match="weight must be 2, not 3.0"):
        check_weight(UpdateMeta("w1", 1, 1, 0, (3, 4), 3.0, 10), per_client=True)
    spec = TensorSpec("k", np.dtype("<f4"), (5,))
    assert expected_specs([spec], 2, per_client=True)[0].shape == (2, 5)
    with pytest.raises(InvalidArgument, match="carries 0 tensors"):
        check_specs([], [spec])
    assert unit.leased_to == "w2" and unit.update is None
