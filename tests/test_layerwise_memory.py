"""optimizer.layerwise=true saves the gradients' memory: under the runner no weight holds a
gradient once the backward pass is over (the normal step holds every one), and a model whose
optimizer was built layer-wise is freed once nothing uses it (the pre-run check of
`lrlab train` builds one; kept alive, it would add a copy of the weights to the run's peak)."""

import gc
import weakref

import lightning as L
import pytest
import torch

from lrlab.optim import adamw, layerwise

RUN = ["debug=smoke", "data.max_tokens=40000", "trainer.max_steps=2", "trainer.val_check_interval=2",
       "trainer.limit_val_batches=1", "trainer.gradient_clip_val=null"]


class GradientsAfterBackward(L.Callback):
    """After each backward pass: the names of the weights that hold a gradient, and of those trained."""

    def __init__(self):
        self.held, self.trained = [], set()

    def on_after_backward(self, trainer, pl_module) -> None:
        self.held.append({name for name, p in pl_module.named_parameters() if p.grad is not None})
        self.trained = {name for name, p in pl_module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("per_weight", [False, True])
def test_no_gradient_is_held_after_the_backward_pass_of_a_layerwise_run(make_cfg, per_weight):
    from lrlab.train import run

    seen = GradientsAfterBackward()
    summary = run(make_cfg(*RUN, f"optimizer.layerwise={str(per_weight).lower()}"), callbacks=[seen])
    assert summary["steps"] == 2 and len(seen.held) == 2
    assert seen.trained
    expected = set() if per_weight else seen.trained
    assert all(held == expected for held in seen.held), (per_weight, seen.held)


def test_a_model_stepped_layerwise_is_freed_with_its_optimizer(tiny):
    model = tiny()
    optimizer = adamw.build(model, lr=1e-2)
    layerwise.attach(optimizer)
    weight = weakref.ref(model.body[1].weight)
    del model, optimizer
    gc.collect()
    assert weight() is None


def test_the_pre_run_check_leaves_no_layerwise_model_behind(make_cfg, tmp_path):
    from lrlab.train import prepare

    ready = prepare(make_cfg(*RUN, "optimizer.layerwise=true"), tmp_path / "run")
    assert ready.task.layerwise_hooks  # the check built the optimizer layer-wise
    weight = weakref.ref(next(ready.task.parameters()))
    del ready
    gc.collect()
    assert weight() is None


def test_the_hooks_go_with_their_optimizer(tiny):
    model = tiny()
    optimizer = adamw.build(model, lr=1e-2)
    layerwise.attach(optimizer)
    del optimizer
    gc.collect()
    model(torch.randn(4, 16))["logits"].sum().backward()  # no hook left to step a freed optimizer
    assert all(p.grad is not None for p in model.parameters())
