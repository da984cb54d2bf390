"""SaRA: the gradient mask, frozen entries that never move (weight decay included), the official
progressive re-selection with its optimizer reset, the earlier periodic one, the two penalties,
and a penalised layer drawn from (seed, step) alone."""

from types import SimpleNamespace

import torch

from lrlab.adapters.sara import penalised_layer
from lrlab.models.classifier import mlp

SMALL = dict(target_modules=["body.1"], threshold=2e-3, penalty_min_side=0)


def _model():
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=(3,))
    with torch.no_grad():
        model.body[1].weight.copy_(torch.tensor([[1e-3, 0.5, -1e-4, 0.2]] * 3))
    return model


def _attach(task, optimizer, total_steps=10):
    """A task as the trainer holds it: `trainer.optimizers` and the run's total steps."""
    task.total_steps = total_steps
    task._trainer = SimpleNamespace(optimizers=[optimizer], global_step=0)
    return task


def test_only_small_weights_move_and_weight_decay_spares_the_frozen_entries(method, make_task):
    sara = method("adapter", "sara", **SMALL, nuclear_weight=0.0)
    model = sara.transform_model(_model())
    task = _attach(make_task(model, [sara], num_classes=2), None)
    assert task.trainable_params() == 6 + 3 * 2 + 2  # masked entries + head
    weight = model.body[1].weight
    before = weight.detach().clone()
    opt = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.5)
    task._trainer.optimizers = [opt]
    model(torch.randn(5, 4))["logits"].sum().backward()
    opt.step()
    sara.after_step(task, 0)
    after = weight.detach()
    assert torch.equal(after[:, [1, 3]], before[:, [1, 3]])  # decay alone would give 0.5 * (1 - 0.05)
    assert (after[:, [0, 2]] != before[:, [0, 2]]).all()


def test_masked_weight_penalty_is_the_nuclear_norm_of_w_times_m(method, make_task):
    sara = method("adapter", "sara", **SMALL, nuclear_weight=0.5)
    model = sara.transform_model(_model())
    task = make_task(model, [sara], num_classes=2)
    with torch.no_grad():
        model.body[1].weight[:, 0] = torch.tensor([1e-3, 2e-3, -1.5e-3])  # entry (1, 0) stays masked (mask fixed)
    masked = torch.tensor([[1e-3, 0, -1e-4, 0], [2e-3, 0, -1e-4, 0], [-1.5e-3, 0, -1e-4, 0]])
    term = sara.loss_term(task, None, None)
    assert torch.allclose(term, 0.5 * torch.linalg.svdvals(masked).sum())
    term.backward()
    grad = model.body[1].weight.grad
    u, _, vh = torch.linalg.svd(masked, full_matrices=False)
    assert torch.allclose(grad, 0.5 * (u[:, :2] @ vh[:2]) * (masked != 0), atol=1e-6)  # d||X||_* = U V^T, masked


def test_masked_update_penalty_is_the_earlier_rule(method, make_task):
    sara = method("adapter", "sara", **SMALL, nuclear_weight=0.5, penalty="masked_update")
    model = sara.transform_model(_model())
    before = model.body[1].weight.detach().clone()
    with torch.no_grad():
        model.body[1].weight.add_(torch.tensor([[1e-3, 7.0, 2e-3, 7.0]] * 3))
    delta = torch.tensor([[1e-3, 0, 2e-3, 0]] * 3)  # only the masked columns 0 and 2 count
    task = make_task(model, [sara], num_classes=2)
    assert torch.allclose(sara.loss_term(task, None, None), 0.5 * torch.linalg.svdvals(delta).sum())
    assert torch.equal(before[:, 1], torch.full((3,), 0.5))


def test_no_penalty_where_no_layer_is_wide_enough(method, make_task):
    sara = method("adapter", "sara", target_modules=["body.1"], threshold=2e-3)  # official: smaller side > 64
    model = sara.transform_model(_model())
    assert sara.loss_term(make_task(model, [sara], num_classes=2), None, None) is None


def test_the_penalised_layer_is_a_function_of_seed_and_step():
    draws = [penalised_layer(7, step, 5) for step in range(200)]
    assert draws == [penalised_layer(7, step, 5) for step in range(200)]  # no hidden generator state
    assert set(draws) == set(range(5)) and draws != [penalised_layer(8, step, 5) for step in range(200)]


def test_progressive_reselects_once_and_clears_the_moments(method, make_task):
    sara = method("adapter", "sara", **SMALL, nuclear_weight=0.0, progressive_iter=3)
    model = sara.transform_model(_model())
    weight, head = model.body[1].weight, model.head.weight
    opt = torch.optim.AdamW([weight, head], lr=1e-5)  # masked entries stay below the threshold
    task = _attach(make_task(model, [sara], num_classes=2), opt)
    model(torch.randn(5, 4))["logits"].sum().backward()
    opt.step()
    with torch.no_grad():
        weight[:, 0] = 1.0  # column 0 leaves the small range
    sara.after_step(task, 1)  # after 2 steps: nothing yet
    assert sara.trained_entries(model) == {"body.1.weight": 6} and weight in opt.state
    with torch.no_grad():
        weight[:, 1] = 1e-4  # a frozen entry that is small now: stays frozen (the official set is M and |W| < t)
    sara.after_step(task, 2)  # after 3 steps = progressive_iter: re-select and clear the target's moments
    assert sara.trained_entries(model) == {"body.1.weight": 3}
    assert weight not in opt.state and head in opt.state
    with torch.no_grad():
        weight[:, 2] = 1.0
    sara.after_step(task, 5)
    assert sara.trained_entries(model) == {"body.1.weight": 3}  # once only


def test_progressive_default_is_half_the_run(method):
    sara = method("adapter", "sara", **SMALL)
    assert sara.reselect_step(5005) == 2502 and sara.reselect_step(1) == 1


def test_periodic_reselection_follows_the_current_weights_and_is_checkpointed(method, make_task):
    settings = dict(**SMALL, schedule="periodic", reselect_every=5)
    sara = method("adapter", "sara", **settings)
    model = sara.transform_model(_model())
    task = make_task(model, [sara], num_classes=2)
    with torch.no_grad():
        model.body[1].weight[:, 0] = 1.0
    sara.after_step(task, 4)
    assert sara.trained_entries(model) == {"body.1.weight": 6}
    sara.after_step(task, 5)
    assert sara.trained_entries(model) == {"body.1.weight": 3}
    state = task.state_dict()
    fresh = method("adapter", "sara", **settings)
    fresh_task = make_task(fresh.transform_model(_model()), [fresh], num_classes=2)
    assert fresh.trained_entries(fresh_task.model) == {"body.1.weight": 6}
    fresh_task.load_state_dict(state)
    assert fresh.trained_entries(fresh_task.model) == {"body.1.weight": 3}


def test_mask_keeps_the_gradient_dtype_under_bf16(method):
    sara = method("adapter", "sara", **SMALL)
    model = sara.transform_model(_model()).to(torch.bfloat16)
    model(torch.randn(5, 4, dtype=torch.bfloat16))["logits"].sum().backward()
    grad = model.body[1].weight.grad
    assert grad.dtype == torch.bfloat16 and (grad[:, [1, 3]] == 0).all() and (grad[:, [0, 2]] != 0).all()


def test_progressive_run_resumes_exactly_across_the_reselection(make_cfg, tmp_path):
    """Random penalised layers (two candidates), re-selection and reset after step 6, a resume at step 4."""
    from lrlab.train import run

    common = ["experiment=baseline/digits_mlp_adamw", "adapter=sara", "adapter.threshold=0.01",
              "adapter.penalty_min_side=0", "adapter.nuclear_weight=0.05", "adapter.progressive_iter=6",
              "trainer.max_steps=8", "trainer.val_check_interval=4", "callbacks.checkpoint.every_n_train_steps=4",
              "callbacks.checkpoint.save_top_k=-1"]
    straight = run(make_cfg(*common, run="straight"))
    run(make_cfg(*common, f"ckpt_path={tmp_path / 'straight' / 'checkpoints' / 'step000004.ckpt'}", run="resumed"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    kept = run(make_cfg(*common[:5], "adapter.progressive_iter=100", *common[6:], run="no_reselection"))
    assert straight["trainable_params"] < kept["trainable_params"]  # entries that grew past 0.01 left the mask
