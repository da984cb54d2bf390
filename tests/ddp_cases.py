"""Every method under data parallelism: the cases, and the worker that runs them on 2 ranks.

`cases()` enumerates every choice of the optimizer, adapter, regularizer, parametrization and
loss groups under conf/ (none is missed: a new file there is a new case). Each case trains a
digits MLP (the pretrained one for adapters) for STEPS steps with its periodic events (projection
refresh, mask re-selection, refactorisation, rank growth, resampling) made to fall inside them.

`python -m torch.distributed.run --nproc_per_node=2 tests/ddp_cases.py OUT CASE...` runs the
named cases one after another in the same two processes (one process-group start for all of
them), each with `trainer=ddp` and the per-process batch GLOBAL_BATCH / 2; the test runs the same
cases in one process with GLOBAL_BATCH and compares the checkpoints.
"""

import sys
from pathlib import Path

import lightning as L
import torch

STEPS = 4
GLOBAL_BATCH = 16
GROUPS = ("optimizer", "adapter", "regularizer", "parametrization", "loss")
COMMON = [f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}", "trainer.limit_val_batches=1",
          "logger=none", "deterministic=true", "seed=3"]

# What makes each method's periodic event happen within STEPS steps (and fits the MLP's sizes).
EVENTS = {
    "optimizer": {
        "galore": ["optimizer.rank=8", "optimizer.update_proj_gap=2"],
        "fira": ["optimizer.rank=8", "optimizer.update_proj_gap=2"],
        "dct": ["optimizer.rank=8", "optimizer.update_proj_gap=2"],
        "lowrank_reset": ["optimizer.rank=8", "optimizer.update_proj_gap=2", "optimizer.rewarm_steps=2"],
        "frugal": ["optimizer.update_proj_gap=2"],
        "frugal_svd": ["optimizer.rank=8", "optimizer.update_proj_gap=2"],
    },
    "adapter": {
        "lift": ["adapter.refresh_every=2"],
        "sara": ["adapter.progressive_iter=2"],
        "increlora": ["adapter.interval=2", "adapter.warmup=1", "adapter.top_h=2"],
        "adalora": ["adapter.tinit=1", "adapter.tfinal=1", "adapter.delta_t=1"],
        "eva": ["adapter.r=4"],  # rho * r = 8 rows: one per-process batch
    },
    "parametrization": {
        "lowrank": ["parametrization.rank=16", "parametrization.refactorize_every=2", "parametrization.rewarm_steps=2"],
        "sltrain": ["parametrization.rank=16", "parametrization.refactorize_every=2", "parametrization.rewarm_steps=2"],
        "lost": ["parametrization.rank=16", "parametrization.channel_fraction=0.05",
                 "parametrization.refactorize_every=2", "parametrization.rewarm_steps=2"],
        "sst": ["parametrization.rank=16", "parametrization.resample_every=2", "parametrization.resvd_every=2"],
        "maestro": ["parametrization.prune_every=2"],
        "trp": ["parametrization.period=2"],
        "weight_norm": ["parametrization.target_modules=[body]"],
    },
}
# A case's variant that isolates what holds exactly: (the case, the overrides added).
VARIANTS = {"adapter/ba_lora_per_sample": ("adapter/ba_lora", ["adapter.lambda2=0", "adapter.lambda3=0"])}
# FSDP2 (`trainer=fsdp2` shards llama's decoder layers): the projection optimizers on llama_tiny.
LLAMA = ["model=llama_tiny", "data=stdlib_bytes", "data.seq_len=32", "data.max_tokens=20000", "trainer.gradient_clip_val=0", *COMMON]
PROJECTION = ["optimizer.rank=8", "optimizer.update_proj_gap=2"]
# FSDP2 (`trainer=fsdp2` shards llama's decoder layers): every optimizer on llama (the projection
# optimizers on its attention and MLP weights).
FSDP2_EVENTS = {"galore": PROJECTION, "fira": PROJECTION, "dct": PROJECTION, "frugal_svd": PROJECTION,
                "lowrank_reset": PROJECTION, "frugal": ["optimizer.update_proj_gap=2"],
                "lowrank": ["parametrization.rank=8", "parametrization.refactorize_every=2"],
                "sltrain": ["parametrization.rank=8", "parametrization.refactorize_every=2"]}
FSDP2_CASES = {f"fsdp2/{path.stem}": [*LLAMA, f"optimizer={path.stem}", *FSDP2_EVENTS.get(path.stem, [])]
               for path in sorted((Path(__file__).parents[1] / "conf" / "optimizer").glob("*.yaml"))}
# The methods that declare they work under FSDP2 (`Method.shardable`), on llama under FSDP2.
FSDP2_METHODS = {"adapter": ["lora", "rslora", "dora", "pissa", "miss", "svfit", "allora"],
                 "parametrization": ["lowrank", "sltrain", "weight_norm"]}
FSDP2_CASES.update({f"fsdp2/{group}-{name}": [*LLAMA, f"{group}={name}", *FSDP2_EVENTS.get(name, [])]
                    for group, names in FSDP2_METHODS.items() for name in names})
# Projection optimizers select weights by module name: the MLP's hidden linears are `body.*`.
TARGETS = {"galore", "fira", "dct", "lowrank_reset", "frugal", "frugal_svd"}


class Probe(L.Callback):
    """Saves, on rank 0, the model's logits on a fixed input at the start and at the end of
    training to `path`: the function the run learned, independent of how a factorisation's gauge
    (an SVD's signs) came out."""

    def __init__(self, path: str):
        self.path, self.start = path, None

    @staticmethod
    def logits(task) -> torch.Tensor:
        """On every rank (an FSDP2 forward gathers the weights from all of them)."""
        generator = torch.Generator().manual_seed(0)
        if hasattr(getattr(task.model, "config", None), "vocab_size"):  # a language model
            x = torch.randint(0, task.model.config.vocab_size, (4, 32), generator=generator)
        else:
            x = torch.randn(64, 64, generator=generator)
        with torch.no_grad():
            return task.model(x.to(task.device))["logits"].float().cpu()

    def on_train_start(self, trainer, task):
        self.start = self.logits(task)

    def on_train_end(self, trainer, task):
        end = self.logits(task)
        if trainer.is_global_zero:
            torch.save({"start": self.start, "end": end}, self.path)


def conf_root() -> Path:
    from lrlab import conf_dir

    return Path(conf_dir())


def cases() -> dict[str, list[str]]:
    found = {}
    for group in GROUPS:
        for path in sorted((conf_root() / group).glob("*.yaml")):
            name = path.stem
            if name in ("none", "cross_entropy"):
                continue
            setting = "setting=digits_pretrained_mlp" if group == "adapter" else "setting=digits_mlp"
            choice = f"{group}={name}"
            extra = list(EVENTS.get(group, {}).get(name, []))
            if group == "optimizer" and name in TARGETS:
                extra.append("optimizer.target_modules=[body]")
            found[f"{group}/{name}"] = [setting, choice, *extra, *COMMON]
    for name, (base, extra) in VARIANTS.items():
        found[name] = [*found[base], *extra]
    return {**found, **FSDP2_CASES}


def run_case(case: str, out: Path, batch_size: int, ddp: bool) -> None:
    from lrlab.train import compose, run

    strategy = "fsdp2" if case.startswith("fsdp2/") else "ddp"
    trainer = [f"trainer={strategy}", "trainer.accelerator=cpu"] if ddp else []
    run_dir = out / case.replace("/", "-")
    probe = [f"+callbacks.probe._target_={__name__}.Probe", f"+callbacks.probe.path={run_dir}/probe.pt"]
    cfg = compose([*cases()[case], *trainer, *probe, f"data.batch_size={batch_size}"], run_dir=str(run_dir))
    run(cfg)


def main(out: str, names: list[str]) -> None:
    from lrlab.console import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    for case in names:
        run_case(case, Path(out), GLOBAL_BATCH // 2, ddp=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
