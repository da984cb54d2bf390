"""`lrlab smoke`: what a preset's miniature swaps, pattern selection, CI output, and every preset
passing in miniature (the check that a broken paper preset fails CI)."""

import xml.etree.ElementTree as ET

import pytest

from lrlab import smoke
from lrlab.errors import ConfigError
from lrlab.train import compose
from lrlab.validate import presets


def test_patterns_select_presets_and_an_unknown_one_is_refused():
    names = ["galore/llama_1b_c4", "galore/llama_tiny_cpu", "lora/digits_pretrained_mlp_lora"]
    assert smoke.select(["galore/*"], names) == names[:2]
    assert smoke.select(["lora", "galore/llama_1b*"], names) == [names[2], names[0]]
    assert smoke.select([], names) == names
    with pytest.raises(ConfigError, match="matches no preset"):
        smoke.select(["nosuch"], names)


def test_a_paper_preset_shrinks_its_model_swaps_hub_data_and_runs_on_a_cpu(tmp_path):
    preset = "galore/llama_1b_c4"
    overrides, swaps = smoke.miniature(compose([f"experiment={preset}"], run_dir="x"), smoke.choices(preset),
                                       tmp_path / "corpus")
    assert {"model.num_hidden_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
            "data.dataset=text", "data.vocab_size=512", "data.num_workers=0", "trainer.accelerator=cpu",
            "optimizer.update_proj_gap=2", "optimizer.rank=8"} <= set(overrides)
    assert swaps == ["llama_1b → 2 layers × 64", "c4 → stdlib text (same HF stream), local BPE tokenizer (512)",
                     "4 loader workers → 0", "trainer gpu → 1 CPU device"]
    cfg = compose([f"experiment={preset}", *overrides], run_dir="x")
    assert cfg.model.hidden_size % cfg.model.num_attention_heads == 0 and cfg.trainer.precision == "bf16-true"


def test_junit_xml_lists_each_preset_and_its_failure():
    results = [smoke.Result("a/b", "2 steps", ok=True, seconds=1.5),
               smoke.Result("c/d", "2 steps", ok=False, reason="loss is nan <at step 2>", seconds=0.5)]
    suite = ET.fromstring(smoke.junit_xml(results, 2.0))
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["a/b"].find("failure") is None
    assert cases["c/d"].find("failure").get("message") == "loss is nan <at step 2>"


def test_cli_refuses_an_unknown_pattern(cli):
    code, _, err = cli("smoke", "no/such_preset")
    assert code == 2 and err.strip().splitlines() == [
        "error: smoke='no/such_preset': matches no preset (`lrlab ls experiment` lists them)"]


@pytest.mark.slow
def test_every_preset_runs_in_miniature_and_resumes_exactly(tmp_path):
    lines = []
    results = smoke.run_all(presets(), tmp_path, report=lines.append)
    failed = {r.preset: r.reason for r in results if not r.ok}
    assert len(results) == len(presets()) and not failed
