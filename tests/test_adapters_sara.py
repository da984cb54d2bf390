import torch

from lrlab.adapters import sara
from lrlab.models.classifier import mlp


def _model():
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=(3,))
    with torch.no_grad():
        model.body[1].weight.copy_(torch.tensor([[1e-3, 0.5, -1e-4, 0.2]] * 3))
    return model


def test_only_small_weights_move_and_penalty_is_nuclear():
    model = sara.apply(_model(), ["body.1"], threshold=2e-3, nuclear_weight=0.5)
    assert model.lrlab_trainable_params() == 6
    weight = model.body[1].weight
    before = weight.detach().clone()
    opt = torch.optim.SGD([weight], lr=0.1)
    model(torch.randn(5, 4))["logits"].sum().backward()
    opt.step()
    moved = (weight.detach() != before)
    assert not moved[:, [1, 3]].any() and moved[:, [0, 2]].all()
    delta = (weight.detach() - before) * (before.abs() < 2e-3)
    assert torch.allclose(model.lrlab_penalty(None, None, None), 0.5 * torch.linalg.matrix_norm(delta, ord="nuc"))


def test_reselection_follows_the_current_weights():
    model = sara.apply(_model(), ["body.1"], threshold=2e-3, reselect_every=5)
    with torch.no_grad():
        model.body[1].weight[:, 0] = 1.0
    model.lrlab_hooks[0](None, 4)
    assert model.lrlab_trainable_params() == 6
    model.lrlab_hooks[0](None, 5)
    assert model.lrlab_trainable_params() == 3
