"""Models of the zoo with extra state train through the real pipeline path (Ray Train DDP, checkpoints, the
registry's loader): UniMixer's temperature schedule and RankMixer-MoE's sparsity controller live in buffers and
come back from the checkpoint."""

from __future__ import annotations

import pytest
import torch

from mixrec.pipelines.checkpoint import load_checkpoint
from mixrec.pipelines.config import TrainConfig
from mixrec.pipelines.train import train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prepared(ray_session, tiny_training_data):
    return tiny_training_data(ray_session, num_events=3000, seed=13)


@pytest.mark.parametrize("model_name, precision", [("unimixer", "fp32"), ("rankmixer_moe", "bf16"),
                                                   ("tokenmixer_large", "fp32")])
def test_zoo_model_trains_with_ray_train_and_reloads(prepared, model_name, precision, tmp_path):
    pre, data = prepared
    cfg = TrainConfig(num_workers=2, epochs=1, batch_size=256, precision=precision, warmup_steps=5,
                      optimizer="adam", embedding_optimizer="adagrad", embedding_learning_rate=0.02)
    kwargs = {"num_layers": 4} if model_name == "tokenmixer_large" else {}  # 4 blocks: aux towers, which need labels
    outcome = train(data["train"], data["valid"], pre, model_name, kwargs, cfg, tmp_path, run_name=f"zoo-{model_name}")
    assert 0.0 <= outcome.metrics["valid_auc"] <= 1.0 and outcome.metrics["valid_rows"] > 0
    if model_name == "rankmixer_moe":  # DTSI: validation AUC with the inference router and with the train router
        assert outcome.metrics["valid_auc_infer_router"] == outcome.metrics["valid_auc"]
        assert 0.0 <= outcome.metrics["valid_auc_train_router"] <= 1.0
    model, loaded_pre, spec = load_checkpoint(outcome.checkpoint_dir)
    assert spec["name"] == model_name and loaded_pre.layout() == pre.layout()
    batch = next(iter(data["valid"].iter_torch_batches(batch_size=16)))
    with torch.no_grad():
        logits = model(batch["categorical"].long(), batch["dense"].float())
    assert logits.shape == (16,) and torch.isfinite(logits).all()
    trained_state = {k: v for k, v in torch.load(outcome.checkpoint_dir / "model.pt").items() if v.dtype != torch.float32}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained_state.items())  # step counters etc.


def test_batch_norm_statistics_are_recomputed_at_each_epoch_end(prepared, tmp_path):
    """DCNv2 with BatchNorm and dropout (the Frappe preset's shape) through Ray Train: the checkpoint's BatchNorm
    statistics are the epoch-end recomputation's (pipelines/precise_bn.py) over the epoch's last 3 batches, not
    the moving averages over every training step."""
    pre, data = prepared
    cfg = TrainConfig(num_workers=2, epochs=2, batch_size=256, embedding_l2=0.05, precise_bn_batches=3)
    kwargs = {"num_cross_layers": 2, "dnn_dims": (32, 32), "batch_norm": True, "dropout": 0.2}
    outcome = train(data["train"], data["valid"], pre, "dcnv2", kwargs, cfg, tmp_path, run_name="precise-bn")
    state = torch.load(outcome.checkpoint_dir / "model.pt")
    tracked = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert outcome.metrics["step"] > 3  # rank 0's batches per epoch: the moving averages would count them all
    assert len(tracked) == 2 and set(tracked.values()) == {3}


def test_with_ema_decay_the_checkpoint_is_the_validated_moving_average(prepared, tmp_path):
    """train.ema_decay through Ray Train DDP: the checkpoint holds the moving average of the weights (with its
    BatchNorm statistics recomputed), scoring it again gives the validation AUC that was reported, and the
    trained weights it resumes from are kept beside it."""
    from mixrec.pipelines.metrics import binary_metrics, predict

    pre, data = prepared
    cfg = TrainConfig(num_workers=2, epochs=2, batch_size=256, ema_decay=0.9, precise_bn_batches=3)
    kwargs = {"num_cross_layers": 2, "dnn_dims": (32, 32), "batch_norm": True, "dropout": 0.2}
    outcome = train(data["train"], data["valid"], pre, "dcnv2", kwargs, cfg, tmp_path, run_name="ema")
    model, _, _ = load_checkpoint(outcome.checkpoint_dir)
    labels, probs, _ = predict(model, data["valid"], batch_size=512)
    assert len(labels) == outcome.metrics["valid_rows"]
    assert binary_metrics(labels, probs)["auc"] == pytest.approx(outcome.metrics["valid_auc"], abs=1e-6)
    live = torch.load(outcome.checkpoint_dir / "optimizer.pt")["live_weights"]
    averaged = model.state_dict()
    assert live.keys() == averaged.keys()
    assert not torch.equal(live["embedding.table.weight"], averaged["embedding.table.weight"])
