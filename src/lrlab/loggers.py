"""Logger factories that need a decision at run time."""

import os


def wandb(save_dir: str, project: str, name: str, offline: bool | None = None, **kwargs):
    """A WandbLogger that runs offline unless WANDB_MODE=online and WANDB_API_KEY is set."""
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = not (os.environ.get("WANDB_MODE") == "online" and os.environ.get("WANDB_API_KEY"))
    return WandbLogger(save_dir=save_dir, project=project, name=name, offline=offline, **kwargs)
