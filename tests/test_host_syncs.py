"""Host synchronisations in the training loop, counted on the CPU (`lrlab.probes.StepSyncs`: every
read-back of a value and every tensor built from host data between the start of one training step
and the next, the loader and torch's host-side step counts left out).

Target: no synchronisation in the optimizer step (tests/test_optimizer_state.py) and at most one
per step in the loop. Each preset below runs in miniature (`lrlab smoke`'s shrink: refreshes,
re-selections and growths every 2 steps) for 6 steps; the first step (lazy state) and the last
(final checkpoint and summary) are left out. The one allowed: Hugging Face's own check, in every
LLaMA/BERT forward, of whether the positions are packed sequences (`transformers.masking_utils`);
lrlab itself reads nothing back in an ordinary step and at most once at a refresh.
"""

import pytest

from lrlab import smoke
from lrlab.probes import StepSyncs
from lrlab.train import TrainingFailed, run

STEPS = 6
PRESETS = [
    "baseline/llama_tiny_adamw", "galore/llama_tiny_cpu", "fira/llama_tiny_cpu", "dct/llama_tiny_cpu",
    "frugal/llama_tiny_cpu", "lowrank_reset/llama_tiny_cpu", "baseline/digits_mlp_adamw",
    "allora/digits_pretrained_mlp_allora", "ba_lora/digits_pretrained_mlp_ba_lora", "eva/digits_pretrained_mlp_eva",
    "increlora/digits_pretrained_mlp_increlora", "lift/digits_pretrained_mlp_lift", "lora/digits_pretrained_mlp_lora",
    "svfit/digits_pretrained_mlp_svfit", "elr/mnist5k_sym40", "nested_dropout/mnist5k_sym40", "nuclear/digits_mlp",
    "pskd/digits_mlp", "sd_guidance/digits_mlp", "grokking/modadd_stablemax_orthograd", "lost/digits_mlp",
    "lowrank/digits_mlp", "maestro/digits_mlp", "pela/digits_mlp", "sltrain/digits_mlp", "sst/digits_mlp",
    "trp/digits_mlp",
]
EXTRA = {"sara": ["adapter=sara", "adapter.progressive_iter=2"]}  # SaRA has no preset of its own


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return smoke.local_corpus(tmp_path_factory.mktemp("corpus"))


def step_syncs(preset: str, extra: list[str], corpus, out) -> list[list[str]]:
    from lrlab.train import compose

    shrink, _ = smoke.miniature(compose([f"experiment={preset}"], run_dir=str(out / "probe")), smoke.choices(preset),
                                corpus)
    cfg = compose([f"experiment={preset}", *shrink, *extra, f"trainer.max_steps={STEPS}",
                   "trainer.val_check_interval=100", "trainer.log_every_n_steps=100", "logger=none",
                   "callbacks.checkpoint.every_n_train_steps=100", "+callbacks.host_syncs._target_=lrlab.probes.StepSyncs"],
                  run_dir=str(out / "run"))
    run(cfg)
    steps = StepSyncs.last
    return [[f"{call} in {caller}" for call, caller in zip(calls, callers)]
            for calls, callers in zip(steps.steps, steps.callers)]


def ours(calls: list[str]) -> list[str]:
    return [c for c in calls if not c.endswith("transformers.masking_utils")]


@pytest.mark.parametrize("preset,extra", [(p, []) for p in PRESETS] +
                         [("lora/digits_pretrained_mlp_lora", extra) for extra in EXTRA.values()])
def test_at_most_one_host_sync_per_step(preset, extra, corpus, tmp_path):
    steps = step_syncs(preset, extra, corpus, tmp_path)
    assert len(steps) == STEPS
    middle = steps[1:-1]
    assert all(len(calls) <= 1 for calls in middle), middle
    assert all(len(ours(calls)) <= 1 for calls in middle) and sum(map(len, map(ours, middle))) <= len(middle) // 2, middle


def test_the_loss_check_reads_back_only_at_logging_steps_and_names_the_first_bad_step(make_cfg):
    """SGD at lr 1e30 diverges at step 1; with metrics read every 4 steps the run stops at step 4's
    read, naming step 1 and its loss, having written no checkpoint."""
    common = ["model=mlp", "data=digits", "optimizer=sgd", "optimizer.lr=1e30", "trainer.gradient_clip_val=null",
              "trainer.max_steps=8", "trainer.val_check_interval=100", "trainer.log_every_n_steps=4",
              "callbacks.checkpoint.every_n_train_steps=100", "+callbacks.host_syncs._target_=lrlab.probes.StepSyncs"]
    with pytest.raises(TrainingFailed, match=r"loss is (nan|inf) at step 1; run stopped: no checkpoint was saved"):
        run(make_cfg(*common))
    steps = StepSyncs.last.steps
    assert len(steps) == 4 and steps[1:3] == [[], []], steps
