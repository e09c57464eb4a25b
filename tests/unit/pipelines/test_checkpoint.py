"""The checkpoint directory: model files and the training state a restarted worker resumes from (no Ray)."""

from __future__ import annotations

import pytest
import torch

from mixrec.models import build_model
from mixrec.pipelines.checkpoint import (
    MODEL_FILES,
    load_checkpoint,
    read_progress,
    restore_training_state,
    save_checkpoint,
    save_training_state,
)
from mixrec.pipelines.optim import (
    build_optimizers,
    build_warmup_schedulers,
    build_weight_average,
    update_weight_average,
)
from mixrec.pipelines.preprocess import DenseStats, Preprocessor
from mixrec.pipelines.train import EarlyStopping

OPTIM = {"optimizer": "adam", "embedding_optimizer": "adagrad", "learning_rate": 1e-2,
         "embedding_learning_rate": 0.05, "weight_decay": 0.0}


def _trained_state(pre: Preprocessor):
    torch.manual_seed(0)
    model = build_model("dnn", pre.layout())
    optimizers = build_optimizers(model, OPTIM)
    schedulers = build_warmup_schedulers(optimizers, 3)
    loss = model(torch.tensor([[1, 2], [2, 1]]), torch.ones(2, 1)).sum()
    loss.backward()
    for name, opt in optimizers.items():
        opt.step()
        schedulers[name].step()
    return model, optimizers, schedulers


def test_training_state_round_trips(tmp_path):
    pre = Preprocessor(categorical=["u", "i"], dense=["p"], vocabularies={"u": [3, 9], "i": ["a", "b"]},
                       dense_stats={"p": DenseStats(0.0, 1.0, False)}, clip_sigma=3.0, label="y")
    model, optimizers, schedulers = _trained_state(pre)
    progress = {"next_epoch": 1, "next_step": 5, "metrics": {"valid_auc": float("nan")}, "best_auc": 0.6,
                "stale_epochs": 0}
    save_checkpoint(tmp_path, model, pre)
    save_training_state(tmp_path, optimizers, schedulers, progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*MODEL_FILES, "optimizer.pt", "progress.json"])

    torch.manual_seed(1)
    fresh = build_model("dnn", pre.layout())
    fresh_opts = build_optimizers(fresh, OPTIM)
    fresh_schedulers = build_warmup_schedulers(fresh_opts, 3)
    restored = restore_training_state(tmp_path, fresh, fresh_opts, fresh_schedulers)
    assert restored["next_step"] == 5 and restored["best_auc"] == 0.6 and read_progress(tmp_path) == restored
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for name in optimizers:
        assert fresh_schedulers[name].state_dict() == schedulers[name].state_dict()
        assert fresh_opts[name].state_dict()["state"].keys() == optimizers[name].state_dict()["state"].keys()
    loaded, _, spec = load_checkpoint(tmp_path)
    assert spec["name"] == "dnn" and not loaded.training


def test_training_state_with_a_weight_average_resumes_both_weights(tmp_path):
    """train.ema_decay: the model files hold the average (what is validated and served); the training state
    holds the trained weights and the average's count, and a resume restores each where it belongs."""
    pre = Preprocessor(categorical=["u", "i"], dense=["p"], vocabularies={"u": [3, 9], "i": ["a", "b"]},
                       dense_stats={"p": DenseStats(0.0, 1.0, False)}, clip_sigma=3.0, label="y")
    model, optimizers, schedulers = _trained_state(pre)
    averaged = build_weight_average(model, 0.5)
    update_weight_average(averaged, model)  # the first update copies the weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_weight_average(averaged, model)  # the second averages: the average is not the weights
    save_checkpoint(tmp_path, averaged.module, pre)
    save_training_state(tmp_path, optimizers, schedulers, {"next_epoch": 1, "next_step": 0}, averaged=averaged,
                        live_model=model)

    torch.manual_seed(1)
    fresh = build_model("dnn", pre.layout())
    fresh_opts = build_optimizers(fresh, OPTIM)
    fresh_average = build_weight_average(fresh, 0.5)
    restore_training_state(tmp_path, fresh, fresh_opts, build_warmup_schedulers(fresh_opts, 3), fresh_average)
    assert int(fresh_average.n_averaged) == 2
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    loaded, _, _ = load_checkpoint(tmp_path)
    for a, b in zip(averaged.module.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                     strict=True))
    # a checkpoint written without the average cannot resume a run that keeps one
    save_training_state(tmp_path, optimizers, schedulers, {"next_epoch": 1, "next_step": 0})
    with pytest.raises(ValueError, match="ema_decay"):
        restore_training_state(tmp_path, fresh, fresh_opts, build_warmup_schedulers(fresh_opts, 3), fresh_average)


@pytest.mark.parametrize(("aucs", "patience", "stops_after"), [
    ([0.6, 0.7, 0.69, 0.65], 2, 4), ([0.6, 0.6], 1, 2), ([0.6, float("nan"), 0.7], 1, 2), ([0.5, 0.4], None, None)])
def test_early_stopping_counts_epochs_without_a_better_auc(aucs, patience, stops_after):
    stopping = EarlyStopping(patience)
    stopped = None
    for epoch, auc in enumerate(aucs, start=1):
        stopping.update(auc)
        if stopping.should_stop:
            stopped = epoch
            break
    assert stopped == stops_after
