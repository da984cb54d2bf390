"""Runner overhead: `lrlab train` tokens/s against a minimal hand-written PyTorch loop.

Same model (llama_tiny), data (stdlib bytes), batch, optimizer (AdamW), schedule and gradient
clipping; both timed over the same steps after the same warm-up, validation excluded.

    python scripts/bench_runner.py [--steps 200] [--repeats 2]
"""

import argparse
import tempfile
import time

import torch
from omegaconf import OmegaConf

from lrlab.cli import quiet_libraries
from lrlab.optim import adamw, schedule
from lrlab.train import build_parts, compose, run

WARMUP = 5


def hand_loop(cfg, steps: int) -> float:
    torch.manual_seed(int(cfg.seed))
    datamodule, task = build_parts(cfg)
    datamodule.setup("fit")
    model = task.model.train()
    opt_cfg = OmegaConf.to_container(cfg.optimizer)
    opt_cfg.pop("_target_")
    opt_cfg.pop("layerwise")
    optimizer = adamw.build(model, **opt_cfg)
    scheduler = schedule.build(optimizer, steps, **OmegaConf.to_container(cfg.scheduler))
    loader = torch.utils.data.DataLoader(datamodule.train_set, batch_size=datamodule.batch_size, shuffle=True,
                                         drop_last=True)
    tokens, started = 0, None
    for step, batch in enumerate(loader):
        if step == steps:
            break
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.trainer.gradient_clip_val))
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if step + 1 == WARMUP:
            started = time.perf_counter()
        elif started is not None:
            tokens += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - started)


def runner(overrides: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([*overrides, "logger=csv", f"trainer.val_check_interval={steps}",
                       f"callbacks.checkpoint.every_n_train_steps={steps}"], run_dir=f"{tmp}/run")
        return run(cfg)["throughput"]["tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()
    overrides = ["experiment=baseline/llama_tiny_adamw", f"trainer.max_steps={args.steps}",
                 "trainer.limit_val_batches=2"]
    cfg = compose(overrides, run_dir="/nonexistent")
    hand, ours = [], []
    for _ in range(args.repeats):  # interleaved, best of N, to damp machine noise
        hand.append(hand_loop(cfg, args.steps))
        ours.append(runner(overrides, args.steps))
    print(f"torch threads: {torch.get_num_threads()}, steps: {args.steps}, repeats: {args.repeats}")
    print(f"{'loop':<22}{'tokens/s (best)':>16}{'all runs':>28}")
    print(f"{'hand-written PyTorch':<22}{max(hand):>16,.0f}{str([round(x) for x in hand]):>28}")
    print(f"{'lrlab train':<22}{max(ours):>16,.0f}{str([round(x) for x in ours]):>28}")
    print(f"ratio lrlab / hand-written: {max(ours) / max(hand):.3f}")


if __name__ == "__main__":
    main()
