"""Checkpoints: a coordinator resumed from one continues exactly where it stopped."""

import numpy as np

from fedstream.common.protocol import Action, UpdateMeta
from fedstream.coordinator import checkpoint
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation

from conftest import tiny_model, weights_digest

CONFIG = FederationConfig(rounds=5, units=2, server_optimizer="adam", server_lr=1e-2)


def update_for(fed, round_, unit):
    rng = np.random.default_rng(round_ * 10 + unit)
    return [rng.standard_normal(s.shape).astype(np.float32) for s in fed.task.update_specs]


def train(fed, until_round):
    wid, _, _ = fed.join("w", "cpu")
    while fed.phase == "training" and fed.round <= until_round:
        a = fed.assignment(wid, 0)
        if a.action is not Action.TRAIN:
            break
        fed.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 3.0, 30),
                 update_for(fed, a.round, a.unit))


def test_resumed_federation_equals_the_uninterrupted_one(tmp_path):
    straight = Federation(CONFIG, tiny_model(), [10] * 6)
    train(straight, 5)
    first = Federation(CONFIG, tiny_model(), [10] * 6, checkpoint_dir=str(tmp_path))
    train(first, 3)
    assert checkpoint.load(tmp_path).round == 3
    resumed = Federation(CONFIG, tiny_model(seed=99), [10] * 6, checkpoint_dir=str(tmp_path))
    assert (resumed.round, resumed.server.version) == (3, 4)
    train(resumed, 5)
    assert resumed.phase == "done" and resumed.server.version == straight.server.version == 6
    assert weights_digest(resumed.server.model) == weights_digest(straight.server.model)


def test_a_checkpoint_of_a_finished_run_resumes_as_done(tmp_path):
    fed = Federation(CONFIG, tiny_model(), [10] * 6, checkpoint_dir=str(tmp_path))
    train(fed, 5)
    again = Federation(CONFIG, tiny_model(), [10] * 6, checkpoint_dir=str(tmp_path))
    wid, _, _ = again.join("w", "cpu")
    assert again.phase == "done" and again.assignment(wid, 0).action is Action.STOP


def test_checkpoint_files_hold_no_pickles_and_export_to_keras(tmp_path, capsys):
    fed = Federation(CONFIG, tiny_model(), [10] * 6, checkpoint_dir=str(tmp_path))
    train(fed, 2)
    with np.load(tmp_path / checkpoint.FILE_NAME, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    from fedstream.cli.main import main
    assert main(["export", str(tmp_path), str(tmp_path / "model.keras")]) == 0
    import keras
    model = keras.saving.load_model(tmp_path / "model.keras")
    for a, b in zip(model.weights, fed.server.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_resumed_run_goes_on_with_the_workers_that_come_back(tmp_path):
    """Before the first round a coordinator waits for --min-workers; a resumed one waits for
    them at most --rejoin-wait-s, or a worker that died with the old coordinator would stall
    the run forever."""
    config = FederationConfig(rounds=5, units=2, min_workers=2, server_optimizer="sgd",
                              rejoin_wait_s=10.0)
    first = Federation(config, tiny_model(), [10] * 6, checkpoint_dir=str(tmp_path))
    alone, _, _ = first.join("a", "cpu")
    assert first.assignment(alone, 0).action is Action.WAIT  # a fresh run waits for both
    first.join("b", "cpu")
    train(first, 2)
    now = [0.0]
    resumed = Federation(config, tiny_model(), [10] * 6, checkpoint_dir=str(tmp_path),
                         clock=lambda: now[0])
    survivor, _, _ = resumed.join("a", "cpu")
    assert resumed.assignment(survivor, 0).action is Action.WAIT  # the other may come back
    now[0] = 9.0
    assert not resumed.check_deadline() and resumed.phase == "waiting_for_workers"
    now[0] = 10.0
    resumed.check_deadline()
    a = resumed.assignment(survivor, 0)
    assert (a.action, a.round) == (Action.TRAIN, 3)
    fresh = Federation(config, tiny_model(), [10] * 6, clock=lambda: now[0])
    fresh.join("a", "cpu")
    now[0] = 1000.0
    fresh.check_deadline()
    assert fresh.phase == "waiting_for_workers"  # a run that never started waits for all
