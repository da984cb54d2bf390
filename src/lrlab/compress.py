"""`lrlab compress ckpt=PATH rank=R | energy=E [out=DIR]`: post-hoc SVD truncation of a trained run.

1. The run is rebuilt from the `config.yaml` of the checkpoint's run dir (`<run>/checkpoints/x.ckpt`)
   and the checkpoint's model weights are loaded (`torch.load(weights_only=True)`).
2. It is evaluated on the run's validation set ("before"), then exported to plain layers (each
   method's `export`: a factorisation or sparse part is multiplied out, an adapter merged).
3. Every targeted weight (the run's `parametrization.target_modules` when it names them, else a
   language model's attention/MLP linears, a classifier body's linears and convolutions; a
   convolution as out × in·kh·kw) is replaced by its rank-k SVD truncation, k = R
   (at most the smaller side) or the smallest rank keeping E of Σσ² (TRP's energy criterion). Where
   the factors B (m×k), A (k×n) hold fewer entries than W, the layer becomes the factorised module
   (`Factorized`, y = B(A x) + b); otherwise it stays dense, holding the truncated matrix.
4. The truncated model is evaluated again ("after").
The report gives, before and after: parameters, bytes of the saved model state dict, and every
validation metric; and per layer the rank kept. It is written to `out` (default
`<run>/compressed/rank-R` or `energy-E`) as `report.json` with the compressed weights `model.pt`;
an existing `out` is refused, so a result is never overwritten.
"""

import io
import json
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from lrlab.errors import ConfigError, require
from lrlab.parametrizations.base import Factorized, energy_rank, matrix_shape, select

KEYS = ("ckpt", "rank", "energy", "out")


def parse(arguments: list[str]) -> dict:
    """`KEY=VALUE` arguments → {key: value}; unknown keys and malformed items are refused."""
    parsed = {}
    for item in arguments:
        key, sep, value = item.partition("=")
        require(bool(sep) and key in KEYS, "compress", item,
                f"arguments are KEY=VALUE with KEY one of {', '.join(KEYS)}")
        parsed[key] = value
    require("ckpt" in parsed, "ckpt", None, "required: the checkpoint of a trained run (ckpt=PATH)")
    require(("rank" in parsed) != ("energy" in parsed), "rank", parsed.get("rank"),
            "give exactly one of rank=R (an integer >= 1) or energy=E (a fraction in (0, 1])")
    if "rank" in parsed:
        require(parsed["rank"].isdigit() and int(parsed["rank"]) >= 1, "rank", parsed["rank"], "an integer >= 1")
        parsed["rank"] = int(parsed["rank"])
    else:
        try:
            parsed["energy"] = float(parsed["energy"])
        except ValueError:
            parsed["energy"] = -1.0
        require(0 < parsed["energy"] <= 1, "energy", parsed["energy"], "a fraction in (0, 1]")
    return parsed


def state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def load_run(ckpt: Path):
    """(config, data module, task with the checkpoint's model weights) of the checkpoint's run."""
    from lrlab.build import build_parts

    from lrlab.resume import load_whole

    require(ckpt.exists(), "ckpt", str(ckpt), "an existing checkpoint (file, or sharded directory)")
    config_path = ckpt.resolve().parent.parent / "config.yaml"
    require(config_path.is_file(), "ckpt", str(ckpt), f"must lie in <run>/checkpoints/ next to {config_path.name}")
    try:
        state = load_whole(ckpt)["state_dict"]
    except Exception as err:  # any unpickling failure means the file is not a usable checkpoint
        raise ConfigError("ckpt", str(ckpt), f"unreadable checkpoint ({type(err).__name__})") from None
    cfg = OmegaConf.load(config_path)
    torch.manual_seed(int(cfg.seed))
    datamodule, task = build_parts(cfg)
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        task.model.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError("ckpt", str(ckpt), f"does not fit its run's model: {str(err).splitlines()[0]}") from None
    return cfg, datamodule, task


def evaluate(task, datamodule) -> dict:
    import lightning as L

    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    return {name: float(value) for name, value in metrics.items()}


@torch.no_grad()
def truncate(model: nn.Module, rank: int | None, energy: float | None, target_modules=None) -> list[dict]:
    """Replace each targeted weight by its SVD truncation (see the module docstring); per-layer record."""
    layers = []
    for name, layer in select(model, target_modules, key="compress"):
        m, n = matrix_shape(layer)
        singular_values = torch.linalg.svdvals(layer.weight.reshape(m, n).float())
        k = min(rank, m, n) if rank is not None else energy_rank(singular_values, energy)
        factored = k * (m + n) < m * n
        compressed = Factorized(layer, k, 1.0, init="svd")
        if factored:
            model.set_submodule(name, compressed)
        else:
            layer.weight.copy_(compressed.matrix().reshape(layer.weight.shape))
        layers.append({"name": name, "shape": [m, n], "rank": k, "factored": factored})
    return layers


def measure(model: nn.Module, task, datamodule) -> dict:
    return {"params": int(sum(p.numel() for p in model.parameters())), "bytes": state_bytes(model),
            "metrics": evaluate(task, datamodule)}


def compress(ckpt: str, rank: int | None = None, energy: float | None = None, out: str | None = None) -> dict:
    ckpt_path = Path(ckpt)
    tag = f"rank-{rank}" if rank is not None else f"energy-{energy}"
    out_dir = Path(out) if out else ckpt_path.resolve().parent.parent / "compressed" / tag
    require(not out_dir.exists(), "out", str(out_dir), "already exists: choose another out=DIR (results are kept)")
    cfg, datamodule, task = load_run(ckpt_path)
    before = measure(task.model, task, datamodule)
    for method in reversed(list(task.methods)):
        task.model = method.export(task.model)
    targets = (cfg.get("parametrization") or {}).get("target_modules")
    layers = truncate(task.model, rank, energy, None if targets is None else list(targets))
    after = measure(task.model, task, datamodule)
    mode = {"rank": rank} if rank is not None else {"energy": energy}
    report = {"ckpt": str(ckpt_path), "out": str(out_dir), "mode": mode,
              "before": before, "after": after, "layers": layers}
    write(out_dir, report, task.model)
    return report


def write(out_dir: Path, report: dict, model: nn.Module) -> None:
    """report.json and model.pt, each written next to itself and renamed into place."""
    out_dir.mkdir(parents=True)
    for name, save in (("model.pt", lambda p: torch.save(model.state_dict(), p)),
                       ("report.json", lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))):
        partial = out_dir / f".{name}.partial"
        save(partial)
        os.replace(partial, out_dir / name)


def describe(report: dict) -> str:
    before, after = report["before"], report["after"]
    lines = [f"{'':<10}{'params':>12}{'bytes':>14}  metrics"]
    for label, part in (("before", before), ("after", after)):
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(part["metrics"].items()))
        lines.append(f"{label:<10}{part['params']:>12,}{part['bytes']:>14,}  {metrics}")
    ranks = ", ".join(f"{layer['name']}:{layer['rank']}" for layer in report["layers"])
    lines.append(f"ranks: {ranks}")
    lines.append(f"written: {report['out']}")
    return "\n".join(lines)


def main(arguments: list[str]) -> None:
    parsed = parse(arguments)
    print(describe(compress(parsed["ckpt"], parsed.get("rank"), parsed.get("energy"), parsed.get("out"))))
