"""Mixed precision on the CPU equivalents of the GPU paths: autocast bf16/fp16 keeps the losses and the
logsumexp mention pooling in float32, and train.py runs both stages with --amp bf16 and --amp fp16
(GradScaler) to finite losses. Also --wandb with WANDB_MODE=disabled."""
import math

import pytest
import torch

import base_module
import helpers
import train
from inference_module import InferenceModule
from losses import at_loss, get_label, simsiam_loss
import utils
from utils import LogitLinear, Pairs

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


def test_bf16_ties_a_close_relation_with_the_threshold_but_logit_linear_does_not():
    # Two classes (threshold, relation) whose logits differ by 0.0025 at a size of 10: bf16 (8 significant
    # bits, a step of 1/16 there) rounds both to the same value, and a tie is "no relation".
    x = torch.full((1, 4), 2.5)
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.001]])
    plain, fp32 = torch.nn.Linear(4, 2, bias=False), LogitLinear(4, 2, bias=False)
    with torch.no_grad():
        plain.weight.copy_(weight)
        fp32.weight.copy_(weight)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tied, kept = plain(x), fp32(x)
    assert tied.dtype == torch.bfloat16 and tied[0, 0] == tied[0, 1]
    assert get_label(tied.float()).tolist() == [[1.0, 0.0]]
    assert kept.dtype == torch.float32
    assert (kept[0, 1] - kept[0, 0]).item() == pytest.approx(0.0025, rel=1e-3)
    assert get_label(kept).tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logit_linear_backward_runs_in_the_features_precision(dtype, monkeypatch):
    """Under autocast LogitLinear's logits are the float32 product of its half-precision input, and its gradients
    are those of an autocast nn.Linear (products in the input's precision), bit for bit; the bias's gradient is
    the float32 sum. Wider inputs are summed over slices of features (the same product to float32 rounding).
    Without autocast it is nn.Linear, gradients included."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 40, generator=g)  # leading dimensions are flattened for the weight's gradient
    upstream = torch.randn(2, 7, 5, generator=g)
    plain, logits = torch.nn.Linear(40, 5), LogitLinear(40, 5)
    logits.load_state_dict(plain.state_dict())
    grads = {}
    for name, layer in (("plain", plain), ("logits", logits)):
        xh = x.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            out = layer(xh)
        (out.float() * upstream).sum().backward()
        grads[name] = (out, xh.grad, layer.weight.grad, layer.bias.grad)
    out, gx, gw, gb = grads["logits"]
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.nn.functional.linear(x.to(dtype).float(), logits.weight, logits.bias))
    assert gx.dtype == dtype and torch.equal(gx, grads["plain"][1])
    assert gw.dtype == torch.float32 and torch.equal(gw, grads["plain"][2])
    torch.testing.assert_close(gb, upstream.sum((0, 1)), rtol=1e-6, atol=1e-6)
    frozen = {}
    for name, layer in (("plain", plain), ("logits", logits)):  # a frozen classifier: the features' gradient only
        layer.requires_grad_(False)
        xh = x.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            (layer(xh).float() * upstream).sum().backward()
        frozen[name] = xh.grad
        layer.requires_grad_(True)
    assert torch.equal(frozen["logits"], frozen["plain"]) and torch.equal(frozen["logits"], gx)
    assert torch.equal(logits.weight.grad, gw)  # not accumulated into while frozen
    monkeypatch.setattr(utils._Float32Logits, "CHUNK", 16)  # 40 features: slices of 16, 16 and 8
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        sliced = logits(x.to(dtype))
    torch.testing.assert_close(sliced, out, rtol=1e-5, atol=1e-5)  # the same product, summed in another order
    xf = x.clone().requires_grad_()
    plain.zero_grad(), logits.zero_grad()
    (plain(xf) * upstream).sum().backward()
    gx_plain = xf.grad.clone()
    xf.grad = None
    out = logits(xf)
    (out * upstream).sum().backward()
    assert torch.equal(out, plain(xf)) and torch.equal(xf.grad, gx_plain)
    assert torch.equal(logits.weight.grad, plain.weight.grad) and torch.equal(logits.bias.grad, plain.bias.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("classifier_layers", [1, 2])
def test_inference_logits_are_float32_under_autocast(dtype, classifier_layers):
    """The inference module's logits come out of a LogitLinear: float32, its fp32 math on its input."""
    g = torch.Generator().manual_seed(0)
    inference = InferenceModule(8, 16, 5, num_layers=1, dropout=0.0, classifier_layers=classifier_layers).eval()
    last = inference.classifier if classifier_layers == 1 else inference.classifier[-1]
    assert isinstance(last, LogitLinear)
    seen = []
    last.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    feats = torch.randn(6, 8, generator=g)
    relations = torch.randint(0, 5, (6,), generator=g)
    pairs = Pairs.from_mask(~torch.eye(3, dtype=torch.bool)[None])  # one document of 3 entities: 6 pairs
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        _, _, logits = inference(feats, relations, pairs)
    (x, out), = seen
    assert logits.dtype == torch.float32
    assert torch.equal(out, torch.nn.functional.linear(x.float(), last.weight, last.bias))
    assert list(last.state_dict()) == ["weight", "bias"]  # checkpoints of nn.Linear load unchanged


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
