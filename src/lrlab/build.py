"""Config → the run's parts: `compose(overrides)` makes the config as `lrlab train` would,
`build_parts(cfg)` the data module and the task (its parts from `lrlab.parts`). Everything is built through `lrlab.instantiate` (every build error becomes one
`ConfigError` line).
"""

from omegaconf import DictConfig, OmegaConf

from lrlab import conf_dir, resolvers  # noqa: F401  (registers ${mul:...}, ${count_or:...}, ${stamp:...} for compose)
from lrlab.errors import require
from lrlab.hydra_app import Source
from lrlab.instantiate import instantiate_node
from lrlab.parts import task_parts


MULTI_CHOICE_GROUPS = ("regularizer", "callbacks", "logger")


def check_single_choices(overrides: list[str]) -> None:
    """A list of options is refused for every group that takes one (a run has one loss, one adapter,
    ...); `regularizer`, `callbacks` and `logger` stack."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group = override.key_or_group
        if (group not in MULTI_CHOICE_GROUPS and (conf_dir() / group).is_dir()
                and isinstance(override.value(), list)):
            require(False, group, override.value(), f"one option: a run has exactly one {group}")


def compose(overrides: list[str] | tuple = (), run_dir: str | None = None, source: Source | None = None) -> DictConfig:
    """The composed config, as `lrlab train` would build it from `source` (default: lrlab's
    configs); `run_dir` fixes `paths.run_dir`."""
    check_single_choices(overrides)
    extra = [f"paths.run_dir={run_dir}"] if run_dir else []
    return (source or Source()).compose([*overrides, *extra])


def check_optimizer(task) -> None:
    """Build the optimizer once up front, so its bad hyperparameters fail before training."""
    task.configure_optimizers()


def task_class(task_kind: str):
    if task_kind == "classify":
        from lrlab.tasks.classify import ClassifyTask

        return ClassifyTask
    from lrlab.tasks.causal_lm import CausalLMTask

    return CausalLMTask


def build_parts(cfg: DictConfig):
    """Instantiate data, model, methods, loss and task; shared by `run` and `validate`. The task
    keeps the resolved config as its hyperparameters (a checkpoint rebuilds it from them)."""
    model_task, task_kind = cfg.model.get("task"), cfg.data.get("task")
    require(model_task == task_kind, "model", cfg.model._target_,
            f"is a {model_task} model but data is {task_kind}: choose a matching model/data pair")
    datamodule = instantiate_node(cfg.data, "data")
    config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, task_class(task_kind)(**task_parts(cfg), config=config)
