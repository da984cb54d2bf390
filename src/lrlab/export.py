"""`lrlab export RUN_DIR [--out DIR]`: a trained run as a folder other tools load.

The run is rebuilt from its `config.yaml` with the weights of `checkpoints/last.ckpt`
(`lrlab.compress.load_run`; FSDP2's sharded directory is joined in this process). Then, by what
its methods say (`Method.export_adapter`, `Method.export`; nothing here names a method):
- a method with an adapter format of its own (PEFT) and no other method that changes the model:
  that format, saved by its `save_pretrained` (`PeftModel.from_pretrained(base, DIR)` restores
  it onto the untouched base model, the fully trained modules included);
- otherwise every method's `export` in reverse order (adapters merged, factorisations made
  dense), and the plain model saved: a Hugging Face model with `save_pretrained`
  (`AutoModelForCausalLM.from_pretrained(DIR)`), any other module as `model.safetensors` with
  its config node `model.yaml` (`hydra.utils.instantiate` of it, then `load_state_dict`).
A language model's tokenizer (the data's, as a Hugging Face tokenizer) is saved next to it.
`export.json` says what was written. The folder (default `<run>/export`) must not exist: it is
written under a temporary name and renamed into place, so a result is never overwritten or
left half-written.
"""

import json
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

from lrlab.errors import require
from lrlab.instantiate import NOT_ARGUMENTS


def exported_model(methods: list, model: nn.Module) -> tuple[nn.Module, str]:
    """(the model to save, its format: `adapter` or `merged`)."""
    keeping = [m for m in methods if m.overrides("export_adapter")]
    changing = [m for m in methods if m.overrides("export") and m not in keeping]
    if len(keeping) == 1 and not changing:
        kept = keeping[0].export_adapter(model)
        if kept is not None:
            return kept, "adapter"
    for method in reversed(methods):
        model = method.export(model)
    return model, "merged"


def save_model(model: nn.Module, folder: Path, model_node) -> str:
    """Write the model; returns how it was written."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(folder))
        return "save_pretrained"
    from safetensors.torch import save_file

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    node = {k: v for k, v in OmegaConf.to_container(model_node, resolve=True).items() if k not in NOT_ARGUMENTS}
    (folder / "model.yaml").write_text(OmegaConf.to_yaml(node))
    return "safetensors"


def export(run_dir: str, out: str | None = None) -> dict:
    from lrlab.compress import load_run

    run = Path(run_dir)
    checkpoint = run / "checkpoints" / "last.ckpt"
    require(run.is_dir() and checkpoint.exists(), "run_dir", run_dir, "a run dir holding checkpoints/last.ckpt")
    out_dir = Path(out) if out else run / "export"
    require(not out_dir.exists(), "out", str(out_dir), "already exists: choose another --out (results are kept)")
    cfg, datamodule, task = load_run(checkpoint)
    task.eval()
    model, form = exported_model(list(task.methods), task.model)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    written = save_model(model, partial, cfg.model)
    tokenizer = getattr(datamodule, "hf_tokenizer", lambda: None)()
    if tokenizer is not None:
        tokenizer.save_pretrained(str(partial))
    record = {"run_dir": str(run), "checkpoint": str(checkpoint), "format": form, "saved_with": written,
              "model": type(model).__name__, "tokenizer": tokenizer is not None}
    (partial / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, out_dir)
    return {**record, "out": str(out_dir)}
