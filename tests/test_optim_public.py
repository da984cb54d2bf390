"""The optimizers outside the runner: `lrlab.optim` exports `LowRankAdamW` and
`lowrank_param_groups`, which routes any module's matrices to one projected group."""

import torch
from torch import nn

from lrlab.optim import LowRankAdamW, lowrank_param_groups
from lrlab.optim.lowrank_adam import build


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)


def test_groups_project_every_matrix_or_the_targets_and_keep_the_rest_dense():
    model = Block()
    projected, *dense = lowrank_param_groups(model, rank=2, weight_decay=0.1, proj_type="left")
    assert projected["params"] == [model.attn.weight, model.mlp.weight, model.out.weight]
    assert (projected["rank"], projected["proj_type"], projected["weight_decay"]) == (2, "left", 0.1)
    assert dense == [{"params": [model.embed.weight], "weight_decay": 0.1},
                     {"params": [model.attn.bias, model.mlp.bias, model.norm.weight, model.norm.bias, model.out.bias],
                      "weight_decay": 0.0}]
    targeted, *_ = lowrank_param_groups(model, rank=2, target_modules=("attn", "mlp"))
    assert targeted["params"] == [model.attn.weight, model.mlp.weight]


def test_the_helper_gives_the_runners_optimizer_the_same_steps():
    """On the same targets, the helper's groups and the config builder's take identical steps."""
    torch.manual_seed(0)
    model = Block()
    twin = Block()
    twin.load_state_dict(model.state_dict())
    ours = LowRankAdamW(lowrank_param_groups(model, rank=2, update_proj_gap=3, target_modules=("attn", "mlp")),
                        lr=1e-2)
    runner = build(twin, lr=1e-2, rank=2, update_proj_gap=3, target_modules=("attn", "mlp"))
    tokens = torch.randint(0, 11, (4, 5))
    for _ in range(5):
        for m, optimizer in ((model, ours), (twin, runner)):
            loss = m.out(m.norm(m.mlp(m.attn(m.embed(tokens))))).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
