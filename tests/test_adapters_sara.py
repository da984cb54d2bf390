import torch

from lrlab.models.classifier import mlp


def _model():
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=(3,))
    with torch.no_grad():
        model.body[1].weight.copy_(torch.tensor([[1e-3, 0.5, -1e-4, 0.2]] * 3))
    return model


def test_only_small_weights_move_and_penalty_is_nuclear(method, make_task):
    sara = method("adapter", "sara", target_modules=["body.1"], threshold=2e-3, nuclear_weight=0.5)
    model = sara.transform_model(_model())
    assert make_task(model, [sara], num_classes=2).trainable_params() == 6 + 3 * 2 + 2  # masked entries + head
    weight = model.body[1].weight
    before = weight.detach().clone()
    opt = torch.optim.SGD([weight], lr=0.1)
    model(torch.randn(5, 4))["logits"].sum().backward()
    opt.step()
    moved = (weight.detach() != before)
    assert not moved[:, [1, 3]].any() and moved[:, [0, 2]].all()
    delta = (weight.detach() - before) * (before.abs() < 2e-3)
    task = make_task(model, [sara], num_classes=2)
    assert torch.allclose(sara.loss_term(task, None, None), 0.5 * torch.linalg.matrix_norm(delta, ord="nuc"))


def test_reselection_follows_the_current_weights_and_is_checkpointed(method, make_task):
    sara = method("adapter", "sara", target_modules=["body.1"], threshold=2e-3, reselect_every=5)
    model = sara.transform_model(_model())
    task = make_task(model, [sara], num_classes=2)
    with torch.no_grad():
        model.body[1].weight[:, 0] = 1.0
    sara.after_step(task, 4)
    assert sara.trained_entries(model) == {"body.1.weight": 6}
    sara.after_step(task, 5)
    assert sara.trained_entries(model) == {"body.1.weight": 3}
    state = task.state_dict()
    fresh = method("adapter", "sara", target_modules=["body.1"], threshold=2e-3, reselect_every=5)
    fresh_task = make_task(fresh.transform_model(_model()), [fresh], num_classes=2)
    assert fresh.trained_entries(fresh_task.model) == {"body.1.weight": 6}
    fresh_task.load_state_dict(state)
    assert fresh.trained_entries(fresh_task.model) == {"body.1.weight": 3}


def test_mask_keeps_the_gradient_dtype_under_bf16(method):
    sara = method("adapter", "sara", target_modules=["body.1"], threshold=2e-3)
    model = sara.transform_model(_model()).to(torch.bfloat16)
    model(torch.randn(5, 4, dtype=torch.bfloat16))["logits"].sum().backward()
    grad = model.body[1].weight.grad
    assert grad.dtype == torch.bfloat16 and (grad[:, [1, 3]] == 0).all() and (grad[:, [0, 2]] != 0).all()
