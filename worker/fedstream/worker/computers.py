"""The update computer a task asks for."""

from __future__ import annotations

from fedstream.common.protocol import Task
from fedstream.worker.compute import GradientComputer
from fedstream.worker.local_training import LocalTrainer
from fedstream.worker.update_computer import UpdateComputer


def make_computer(task: Task, device: str) -> UpdateComputer:
    """Gradients (FedSGD), or local training (the FedAvg family) when the task has it."""
    if task.local is not None:
        return LocalTrainer(task, device)
    return GradientComputer(task, device)
