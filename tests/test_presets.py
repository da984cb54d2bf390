"""Every preset composes to the config recorded in `tests/golden/presets.yaml`.

Presets are a shared setting plus the method's delta; restructuring them must not change what
any of them runs. A deliberate change to a preset is recorded by regenerating the file:
`LRLAB_UPDATE_GOLDEN=1 python -m pytest tests/test_presets.py`, and the diff is reviewed.
"""

import os
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lrlab.train import compose
from lrlab.validate import presets

GOLDEN = Path(__file__).parent / "golden" / "presets.yaml"


def composed(preset: str) -> dict:
    """The preset's composed config, unresolved (so no environment enters it), without hydra's node."""
    cfg = compose([f"experiment={preset}", "run_name=golden"], run_dir="golden")
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    return plain


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("LRLAB_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(yaml.safe_dump({name: composed(name) for name in presets()}, sort_keys=True))
    return yaml.safe_load(GOLDEN.read_text())


def test_golden_lists_every_preset(golden):
    assert sorted(golden) == presets()


@pytest.mark.parametrize("preset", presets())
def test_preset_composes_as_recorded(golden, preset):
    assert composed(preset) == golden[preset]
