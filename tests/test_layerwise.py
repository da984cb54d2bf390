"""optimizer.layerwise=true: each weight stepped in the backward pass gives the normal step's
parameters (through projection refreshes and the lr schedule), holds one gradient at a time,
resumes exactly, and refuses what cannot combine with it with one line."""

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tree_digest
from lrlab.optim import adamw, frugal, layerwise, lowrank_adam, schedule

BUILDERS = {
    "adamw": lambda m: adamw.build(m, lr=1e-2, weight_decay=0.1),
    "adamw_matrix_scale": lambda m: adamw.build(m, lr=1e-2, matrix_lr_scale=0.5, target_modules=["body"]),
    "galore": lambda m: lowrank_adam.build(m, lr=1e-2, rank=4, update_proj_gap=3, target_modules=["body"],
                                           weight_decay=0.1),
    "fira": lambda m: lowrank_adam.build(m, lr=1e-2, rank=4, update_proj_gap=3, residual="fira",
                                         target_modules=["body"]),
    "dct_rotate": lambda m: lowrank_adam.build(m, lr=1e-2, rank=4, update_proj_gap=3, basis="dct",
                                               on_refresh="rotate", target_modules=["body"]),
    "lowrank_reset": lambda m: lowrank_adam.build(m, lr=1e-2, rank=4, update_proj_gap=3, on_refresh="reset_all",
                                                  rewarm_steps=2, target_modules=["body"]),
    "frugal_svd": lambda m: lowrank_adam.build(m, lr=1e-2, rank=4, update_proj_gap=3, residual="frugal",
                                               on_refresh="reset_projected", target_modules=["body"]),
    "frugal_blocks": lambda m: frugal.build(m, lr=1e-2, density=0.5, update_proj_gap=3, target_modules=["body"]),
}
STEPS = 8  # refreshes at steps 0, 3 and 6; warmup then cosine decay


def _train(tiny, build, per_weight: bool, alive: list | None = None) -> nn.Module:
    model = tiny()
    optimizer = build(model)
    scheduler = schedule.build(optimizer, STEPS, warmup_ratio=0.25)
    handles = layerwise.attach(optimizer) if per_weight else []
    if alive is not None:  # after each weight's hook: how many gradients exist at that moment
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p in params:
            p.register_post_accumulate_grad_hook(lambda _: alive.append(sum(q.grad is not None for q in params)))
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x, y = torch.randn(16, 16, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x)["logits"], y).backward()
        optimizer.step()
        scheduler.step()
    layerwise.detach(handles)
    return model


@pytest.mark.parametrize("name", list(BUILDERS))
def test_layerwise_step_equals_the_normal_step(tiny, name):
    normal = _train(tiny, BUILDERS[name], per_weight=False)
    stepped = _train(tiny, BUILDERS[name], per_weight=True)
    for (key, a), (_, b) in zip(normal.named_parameters(), stepped.named_parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7, msg=f"{name}: {key}")
    assert not torch.equal(normal.body[1].weight, tiny().body[1].weight)  # it trained


def test_layerwise_holds_one_gradient_at_a_time(tiny):
    alive = []
    _train(tiny, BUILDERS["galore"], per_weight=True, alive=alive)
    assert alive and max(alive) == 0  # each gradient is freed by its own hook, before the next arrives
    counted = []
    _train(tiny, BUILDERS["galore"], per_weight=False, alive=counted)
    assert max(counted) == len(list(tiny().parameters()))  # the normal step holds them all


def test_optimizers_that_are_not_per_weight_are_refused(tiny):
    from lrlab.errors import ConfigError
    from lrlab.optim import sgd

    with pytest.raises(ConfigError, match="optimizer.layerwise=True: supported by adamw"):
        layerwise.attach(sgd.build(tiny()))


# --- the runner ---------------------------------------------------------------------------
GALORE = ["experiment=galore/llama_tiny_cpu", "data.max_tokens=60000", "data.seq_len=64", "optimizer.rank=8",
          "optimizer.update_proj_gap=3", "trainer.gradient_clip_val=null", "trainer.val_check_interval=8",
          "trainer.limit_val_batches=1", "scheduler=constant", "scheduler.warmup_ratio=0"]  # max_steps changes at the resume


def _params(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_layerwise_run_and_its_resume_equal_the_normal_run(make_cfg, tmp_path):
    from lrlab.train import run

    normal = run(make_cfg(*GALORE, "trainer.max_steps=8", run="normal"))
    stepped = run(make_cfg(*GALORE, "trainer.max_steps=8", "optimizer.layerwise=true", run="layerwise"))
    first = run(make_cfg(*GALORE, "trainer.max_steps=4", "optimizer.layerwise=true", run="split"))
    resumed = run(make_cfg(*GALORE, "trainer.max_steps=8", "optimizer.layerwise=true", "resume=auto", run="split"))
    assert first["steps"] == 4 and resumed["status"] == "completed" and resumed["steps"] == 8
    reference = _params(tmp_path / "normal" / "checkpoints" / "last.ckpt")
    for name in ("layerwise", "split"):
        got = _params(tmp_path / name / "checkpoints" / "last.ckpt")
        assert got.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(got[key], reference[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    assert stepped["optimizer_state_bytes"] == normal["optimizer_state_bytes"]
    assert stepped["metrics"]["final"]["val/loss"] == pytest.approx(normal["metrics"]["final"]["val/loss"], abs=1e-5)




SMOKE = ["debug=smoke", "logger=none", "data.max_tokens=40000", "optimizer.layerwise=true"]
REFUSED = {
    "global clipping": ([], "trainer.gradient_clip_val=1.0"),
    "accumulation": (["trainer.gradient_clip_val=null", "trainer.accumulate_grad_batches=2"],
                     "trainer.accumulate_grad_batches=2"),
    "two processes": (["trainer.gradient_clip_val=null", "trainer=ddp_spawn"], "trainer.devices=2"),
    "fp16 scaler": (["trainer.gradient_clip_val=null", "trainer.precision=16-mixed"], "trainer.precision='16-mixed'"),
    "own optimizer": (["trainer.gradient_clip_val=null", "adapter=lift"], "adapter='lift'"),
    "acts after the step": (["trainer.gradient_clip_val=null", "parametrization=lowrank"], "parametrization="),
    "reads gradients": (["trainer.gradient_clip_val=null", "callbacks=spectra"], "callbacks.spectra="),
    "not per weight": (["trainer.gradient_clip_val=null", "optimizer=sgd"], "optimizer.layerwise=True"),
    "not a bool": (["trainer.gradient_clip_val=null", "optimizer.layerwise=yes"], "optimizer.layerwise='yes'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_combine_is_refused_in_one_line(cli, tmp_path, case):
    extra, key = REFUSED[case]
    before = tree_digest(tmp_path)
    code, _, err = cli("train", *SMOKE, *extra)
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err[-2000:]
    assert tree_digest(tmp_path) == before
