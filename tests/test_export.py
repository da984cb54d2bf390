"""`lrlab export`: round trips through the loaders other tools use. A causal LM reloads with
`AutoModelForCausalLM.from_pretrained` (identical logits) with its tokenizer; a LoRA classifier
reloads with `PeftModel.from_pretrained` onto the untouched base model (identical outputs, the
trained head included); lrlab's own adapter exports merged and a parametrized model dense."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lrlab.compress import load_run
from lrlab.instantiate import instantiate_node

LM = ["debug=smoke", "data.max_tokens=40000", "logger=none"]
DIGITS = ["experiment=baseline/digits_mlp_adamw", "debug=smoke", "logger=none"]
LORA_CLASSIFIER = [*DIGITS, "adapter=lora", "model=mlp_pretrained", "data.classes=[5,6,7,8,9]"]


def trained(cli, tmp_path: Path, name: str, *overrides) -> Path:
    code, _, err = cli("train", *overrides, f"run_name={name}")
    assert code == 0, err
    return tmp_path / "outputs" / "runs" / name


def exported(cli, run_dir: Path) -> Path:
    code, out, err = cli("export", str(run_dir))
    assert code == 0, err
    assert out.strip().endswith(str(run_dir / "export"))
    return run_dir / "export"


def test_a_causal_lm_reloads_in_transformers_with_identical_logits(cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = trained(cli, tmp_path, "lm", *LM)
    folder = exported(cli, run_dir)
    _, _, task = load_run(run_dir / "checkpoints" / "last.ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, task.model.eval()(input_ids=ids).logits)
    text = "def f(x):\n    return x  # é"
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == list(text.encode())
    assert json.loads((folder / "export.json").read_text())["format"] == "merged"


def test_a_lora_classifier_reloads_in_peft_with_its_trained_head(cli, tmp_path):
    from peft import PeftModel

    run_dir = trained(cli, tmp_path, "lora", *LORA_CLASSIFIER)
    folder = exported(cli, run_dir)
    cfg, _, task = load_run(run_dir / "checkpoints" / "last.ckpt")
    assert json.loads((folder / "adapter_config.json").read_text())["modules_to_save"] == ["head"]
    base = instantiate_node(cfg.model, "model")
    untrained_head = base.head.weight.detach().clone()
    reloaded = PeftModel.from_pretrained(base, folder).eval()
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = task.model.eval()(x)["logits"]
        assert torch.equal(reloaded(x)["logits"], expected)
        trained_head = reloaded.base_model.model.head.modules_to_save["default"].weight
    assert not torch.equal(trained_head, untrained_head)  # the head trained: without it the outputs differ


@pytest.mark.parametrize("name,overrides", [
    ("allora", [*DIGITS, "adapter=allora", "model=mlp_pretrained", "data.classes=[5,6,7,8,9]"]),
    ("lowrank", [*DIGITS, "parametrization=lowrank", "parametrization.rank=4"]),
])
def test_own_adapters_export_merged_and_parametrizations_dense(cli, tmp_path, name, overrides):
    run_dir = trained(cli, tmp_path, name, *overrides)
    folder = exported(cli, run_dir)
    record = json.loads((folder / "export.json").read_text())
    assert (record["format"], record["saved_with"]) == ("merged", "safetensors")
    _, _, task = load_run(run_dir / "checkpoints" / "last.ckpt")
    from safetensors.torch import load_file

    plain = instantiate(OmegaConf.load(folder / "model.yaml"), _convert_="all")
    plain.load_state_dict(load_file(folder / "model.safetensors"))  # strict: only the plain model's weights
    assert all(type(m).__module__.startswith(("torch.", "lrlab.models")) for m in plain.modules())
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x)["logits"], task.model.eval()(x)["logits"], atol=1e-5)


def test_an_existing_out_is_refused_and_kept(cli, tmp_path):
    run_dir = trained(cli, tmp_path, "keep", *DIGITS)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("mine")
    code, _, err = cli("export", str(run_dir), "--out", str(tmp_path / "taken"))
    assert code == 2 and err.startswith("error: out=") and "already exists" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
    assert not (run_dir / "export").exists()
