"""What a federation writes after each round and continues from: the server model (weights,
optimizer state, version), the round, the config it ran under and the round policy's own
state (the privacy ledger, adaptive clip, the asynchronous unit counter), as one
`checkpoint.Checkpoint`."""

from __future__ import annotations

import logging

from fedstream.coordinator import checkpoint
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.policy import RoundPolicy
from fedstream.coordinator.privacy import check_resume
from fedstream.coordinator.server_model import ServerModel

log = logging.getLogger(__name__)


class Snapshots:
    def __init__(self, directory: str | None, config: FederationConfig, model_json: str,
                 server: ServerModel, policy: RoundPolicy):
        self.directory = directory
        self._config = config
        self._model_json = model_json
        self._server = server
        self._policy = policy

    def take(self, completed_round: int) -> checkpoint.Checkpoint | None:
        """The state after `completed_round`; None when this federation keeps none."""
        if self.directory is None:
            return None
        return checkpoint.Checkpoint(
            round=completed_round, version=self._server.version, model_json=self._model_json,
            config=self._config.flat(), weights=list(self._server.weights),
            optimizer=self._server.optimizer_state(), state=self._policy.state())

    def resume(self) -> int:
        """Restore the model and the policy from the folder's checkpoint; the round it was
        written after (0: nothing to resume)."""
        ckpt = None if self.directory is None else checkpoint.load(self.directory)
        if ckpt is None:
            return 0
        if ckpt.config.get("units") != self._config.units:
            log.warning("checkpoint was written with %s units, resuming with %d: the model "
                        "will differ from an uninterrupted run by float rounding",
                        ckpt.config.get("units"), self._config.units)
        check_resume(self._config.privacy, ckpt.state)
        self._server.restore(ckpt, self.directory)
        self._policy.restore(ckpt.state)
        log.info("resumed from %s after round %d (version %d); the next round opens when %d "
                 "worker(s) are back, or %.0f s after the first is", self.directory,
                 ckpt.round, self._server.version, self._config.min_workers,
                 self._config.rejoin_wait_s)
        return ckpt.round
