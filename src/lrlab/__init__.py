"""lrlab: a config-driven experiment runner for memory-efficient and regularised training."""

from pathlib import Path

__version__ = "0.1.0"


def conf_dir() -> Path:
    """The Hydra config tree: packaged inside the wheel, or the repository's `conf/`."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"
