"""The resume state: one typed record, saved and loaded in one place, refused under another config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from skintriage.model.bundle import BundleError, save_training_state
from skintriage.training.config import ConfigError, TrainConfig
from skintriage.training.state import STATE_FILE, TrainingState, resume_state

CONFIG = TrainConfig(name="unit", sources=[{"name": "folder", "root": "unused"}])


def trained_pieces(seed: int) -> tuple[nn.Module, AveragedModel, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    ema.update_parameters(model)
    return model, ema, optimizer


def test_a_saved_state_restores_weights_ema_optimizer_and_counters(tmp_path: Path) -> None:
    model, ema, optimizer = trained_pieces(seed=0)
    state = TrainingState(config=CONFIG.model_dump(), epoch=3, step=42, best_score=0.5, stale_epochs=1)
    state.history.append({"epoch": 3, "train_loss": 0.7})
    state.capture(model=model, ema=ema, optimizer=optimizer)
    state.save(tmp_path / STATE_FILE)

    loaded = TrainingState.load(tmp_path / STATE_FILE)
    assert (loaded.epoch, loaded.step, loaded.best_score, loaded.stale_epochs) == (3, 42, 0.5, 1)
    assert loaded.history == [{"epoch": 3, "train_loss": 0.7}] and loaded.config == CONFIG.model_dump()
    fresh_model, fresh_ema, fresh_optimizer = trained_pieces(seed=1)
    loaded.restore(model=fresh_model, ema=fresh_ema, optimizer=fresh_optimizer)
    for restored, original in ((fresh_model, model), (fresh_ema, ema)):
        for key, value in original.state_dict().items():
            assert torch.equal(restored.state_dict()[key], value), key
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_run_without_an_ema_saves_an_empty_one(tmp_path: Path) -> None:
    model, _, optimizer = trained_pieces(seed=0)
    state = TrainingState(config=CONFIG.model_dump())
    state.capture(model=model, ema=None, optimizer=optimizer)
    state.save(tmp_path / STATE_FILE)
    assert TrainingState.load(tmp_path / STATE_FILE).ema == {}


def test_a_state_with_missing_or_unknown_fields_is_refused_by_name(tmp_path: Path) -> None:
    fields = {name: value for name, value in vars(TrainingState(config={})).items() if name != "step"}
    save_training_state(tmp_path / STATE_FILE, {**fields, "scaler": {}})
    with pytest.raises(BundleError, match=r"missing \['step'\], unexpected \['scaler'\]\); delete it"):
        TrainingState.load(tmp_path / STATE_FILE)


def test_resume_state_is_none_for_a_fresh_folder_and_the_state_for_the_same_config(tmp_path: Path) -> None:
    assert resume_state(tmp_path, CONFIG) is None
    TrainingState(config=CONFIG.model_dump(), epoch=2).save(tmp_path / STATE_FILE)
    assert resume_state(tmp_path, CONFIG).epoch == 2


def test_resume_state_refuses_another_config_and_names_the_folder(tmp_path: Path) -> None:
    TrainingState(config=CONFIG.model_dump(), epoch=2).save(tmp_path / STATE_FILE)
    with pytest.raises(ConfigError, match=rf"{tmp_path} holds a run with a different config"):
        resume_state(tmp_path, CONFIG.model_copy(update={"lr": 0.01}))
