"""Mixed precision on the CPU equivalents of the GPU paths: autocast bf16/fp16 keeps the losses and the
logsumexp mention pooling in float32, and train.py runs both stages with --amp bf16 and --amp fp16
(GradScaler) to finite losses. Also --wandb with WANDB_MODE=disabled."""
import math

import pytest
import torch

import base_module
import helpers
import train
from losses import at_loss, simsiam_loss

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with helpers.one_thread():
        yield


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_are_float32_under_autocast(dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    labels = torch.zeros(6, 5)
    labels[:3, 2] = 1
    labels[3:, 0] = 1
    with torch.autocast("cpu", dtype=dtype):
        low = logits.to(dtype)
        loss = at_loss(low, labels)
        cl = simsiam_loss(low, low, low, low)
    assert loss.dtype == torch.float32 and cl.dtype == torch.float32
    assert loss.item() == pytest.approx(at_loss(low.float(), labels).item(), abs=1e-6)


def test_logsumexp_pooling_runs_in_float32_under_autocast(monkeypatch):
    seen = []
    real = torch.logsumexp

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return real(x, *a, **k)

    monkeypatch.setattr(torch, "logsumexp", spy)
    seq = torch.randn(1, 6, 8).to(torch.bfloat16)
    att = torch.softmax(torch.randn(1, 2, 6, 6), -1).to(torch.bfloat16)
    pos = torch.tensor([[[1, 3], [4, 0]]])
    mask = torch.tensor([[[True, True], [True, False]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, _ = base_module.BaseModule.pool_entities(None, seq, att, pos, mask)
    assert seen == [torch.float32]
    expected = torch.logsumexp(seq[0, [1, 3]].float(), dim=0)
    assert torch.allclose(h[0, 0].float(), expected, atol=1e-2)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_with_amp_on_cpu(tmp_path, amp):
    data = helpers.write_dataset(tmp_path / "data")
    model = helpers.tiny_model(tmp_path / "model")
    save = tmp_path / "run"
    code = train.cli(helpers.train_args(data, model, save, tmp_path / "cache", "--amp", amp, stage1=1, stage2=1))
    assert code == 0
    lines = helpers.read_metrics(save)
    assert [ln["stage"] for ln in lines] == [1, 2]
    for ln in lines:
        assert math.isfinite(ln["train_loss"]) and ln["skipped_steps"] <= 1


def test_wandb_disabled_mode(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    data = helpers.write_dataset(tmp_path / "data")
    model = helpers.tiny_model(tmp_path / "model")
    code = train.cli(helpers.train_args(data, model, tmp_path / "run", tmp_path / "cache", "--wandb", stage1=1))
    wandb.teardown()  # later tests set their own WANDB_* variables
    assert code == 0
    assert len(helpers.read_metrics(tmp_path / "run")) == 1
