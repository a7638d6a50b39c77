"""Helpers shared by the training tests (test_train.py, test_train_options.py)."""

import pytest
from safetensors.torch import load_file

from lame.training.train import Trainer, train


def weights(run_dir):
    """The saved model tensors of a run directory."""
    return load_file(str(run_dir / "model.safetensors"))


def train_killed_at(kill_step, digits_dir, out, model_config, cfg, monkeypatch):
    """Train into ``out`` and simulate a kill (KeyboardInterrupt) when step ``kill_step``
    starts; the trainer is restored afterwards, so a --resume of ``out`` runs normally."""
    real_step = Trainer._step

    def killed(self, step, params, optimizer):
        if step == kill_step:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, step, params, optimizer)

    monkeypatch.setattr(Trainer, "_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(digits_dir, out, model_config, cfg, show_progress=False)
    monkeypatch.setattr(Trainer, "_step", real_step)
