"""GradNormLoRP = weight norm (parametrization) + GaLore: the reparametrisation keeps the function,
the gradients split as the rule says, the direction is projected and the magnitude is not."""

import torch
from torch import nn

from lrlab.optim import lowrank_adam
from lrlab.train import run


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(6, 5, bias=False)


def test_function_unchanged_and_gradients_split(method):
    torch.manual_seed(0)
    model = Block()
    weight = model.attn.weight.detach().clone()
    x = torch.randn(4, 6)
    before = model.attn(x)
    weight_norm = method("parametrization", "weight_norm")
    model = weight_norm.transform_model(model)
    opt = lowrank_adam.build(model, rank=2, update_proj_gap=3)
    assert torch.allclose(model.attn(x), before, atol=1e-6)
    g, v = model.attn.parametrizations.weight.original0, model.attn.parametrizations.weight.original1
    assert torch.allclose(g.squeeze(1), weight.norm(dim=1)) and opt.param_groups[0]["params"] == [v]
    out = model.attn(x).sum()
    out.backward()
    full_grad = torch.ones(4, 5).T @ x  # dL/dW for L = sum(W x)
    direction = v / v.norm(dim=1, keepdim=True)
    assert torch.allclose(g.grad.squeeze(1), (full_grad * direction).sum(1), atol=1e-5)
    radial = (full_grad * direction).sum(1, keepdim=True) * direction
    assert torch.allclose(v.grad, (full_grad - radial) * (g / v.norm(dim=1, keepdim=True)), atol=1e-5)
    assert opt.param_groups[1]["params"] == [g]  # the m x 1 magnitude: full Adam
    opt.step()
    exported = weight_norm.export(model)
    assert isinstance(exported.attn.weight, nn.Parameter)
    assert torch.allclose(exported.attn.weight, g * v / v.norm(dim=1, keepdim=True))


def test_preset_trains_and_resumes(make_cfg, tmp_path):
    common = ["experiment=gradnorm_lorp/llama_tiny_cpu", "data.max_tokens=60000", "data.seq_len=64",
              "optimizer.update_proj_gap=3", "trainer.max_steps=8", "trainer.val_check_interval=4",
              "callbacks.checkpoint.every_n_train_steps=4", "callbacks.checkpoint.save_top_k=-1"]
    assert run(make_cfg(*common, run="straight"))["status"] == "completed"
    run(make_cfg(*common, f"ckpt_path={tmp_path / 'straight' / 'checkpoints' / 'step000004.ckpt'}", run="resumed"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any("original1" in k for k in a) and all(torch.equal(a[k], b[k]) for k in a)


def test_without_the_radial_term_v_gets_g_over_norm_times_g(method):
    """parametrization.radial=false: dV = G g/||V|| (official GradNormLoRP), dg unchanged, same forward."""
    block = Block()
    v = torch.tensor([[3.0, 4.0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0, 0, 0],
                      [0, 0, 0, 0, 2.0, 0], [0, 0, 0, 0, 0, 5.0]])
    with torch.no_grad():
        block.attn.weight.copy_(v)
    weight_norm = method("parametrization", "weight_norm", radial=False)
    model = weight_norm.transform_model(block)
    g, v_param = model.attn.parametrizations.weight.original0, model.attn.parametrizations.weight.original1
    with torch.no_grad():
        g.copy_(torch.tensor([[2.0], [1.0], [0.5], [1.0], [3.0]]))
    norms = torch.tensor([[5.0], [1.0], [2.0], [2.0], [5.0]])
    assert torch.allclose(model.attn.weight, g * v / norms)
    x = torch.ones(1, 6)
    upstream = torch.tensor([[1.0, -1.0, 2.0, 0.5, 1.0]])
    (model.attn(x) * upstream).sum().backward()
    G = upstream.T @ x  # dL/dW
    assert torch.allclose(v_param.grad, G * g / norms)  # no radial projection
    assert torch.allclose(g.grad, (G * v / norms).sum(1, keepdim=True))
    exported = weight_norm.export(model)
    assert torch.allclose(exported.attn.weight, g * v / norms)
