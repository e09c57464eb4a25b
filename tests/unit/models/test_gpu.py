"""Every model on a CUDA device: bf16-autocast forward agrees with the fp32 CPU forward, and a training step
runs there. Marked `gpu`: skipped where torch sees no CUDA device (CI); run them with `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch

from mixrec.models import FeatureLayout, build_model
from mixrec.models.zoo import available_models

pytestmark = pytest.mark.gpu

LAYOUT = FeatureLayout(cardinalities=(50, 40, 30, 20), n_dense=3)


@pytest.mark.parametrize("name", available_models())
def test_bf16_forward_on_the_gpu_matches_fp32_on_the_cpu(name):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT).eval()
    cat = torch.stack([torch.randint(0, c, (64,)) for c in LAYOUT.cardinalities], 1)
    dense = torch.randn(64, LAYOUT.n_dense)
    with torch.no_grad():
        reference = torch.sigmoid(model(cat, dense))
        model.to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            on_gpu = torch.sigmoid(model(cat.cuda(), dense.cuda()).float()).cpu()
    assert torch.allclose(on_gpu, reference, atol=2e-2)


@pytest.mark.parametrize("name", available_models())
def test_a_training_step_runs_on_the_gpu(name):
    model = build_model(name, LAYOUT).to("cuda").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    cat = torch.stack([torch.randint(0, c, (32,)) for c in LAYOUT.cardinalities], 1).cuda()
    dense, labels = torch.randn(32, LAYOUT.n_dense, device="cuda"), torch.randint(0, 2, (32,), device="cuda").float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(cat, dense)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels) + model.auxiliary_loss(labels)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
