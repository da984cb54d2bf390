"""Config → the run's parts: `build_parts(cfg)` makes the data module and the task: the model, then
the methods in order (parametrization, adapter, regularizers) each transforming it, and the loss.
Everything is built through `lrlab.instantiate` (every build error becomes one `ConfigError` line).
"""

from omegaconf import DictConfig, OmegaConf

from lrlab import conf_dir
from lrlab.errors import require
from lrlab.instantiate import instantiate_node
from lrlab.optim import layerwise
from lrlab.protocol import Loss, Method


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


def _method(node, key: str, kind: type = Method) -> Method:
    built = instantiate_node(node, key)
    require(isinstance(built, kind), key, node.get("_target_"), f"must build a {kind.__module__}.{kind.__name__}")
    built.config_key = key
    return built


def build_methods(cfg: DictConfig) -> list[Method]:
    """The run's methods in the order they transform the model."""
    methods = []
    for group in ("parametrization", "adapter"):
        node = cfg.get(group)
        if node:
            methods.append(_method(node, group))
    for name, node in (cfg.get("regularizer") or {}).items():
        methods.append(_method(node, f"regularizer.{name}"))
    return methods


def build_loss(cfg: DictConfig) -> Loss:
    return _method(cfg.loss, "loss", Loss)


def check_task(methods: list[Method], task_kind: str) -> None:
    for method in methods:
        require(task_kind in method.tasks, method.config_key, method.name,
                f"supports the {'/'.join(method.tasks)} task, not {task_kind}")


def build_parts(cfg: DictConfig):
    """Instantiate data, model, methods, loss and task; shared by `run` and `validate`."""
    model_task, task_kind = cfg.model.get("task"), cfg.data.get("task")
    require(model_task == task_kind, "model", cfg.model._target_,
            f"is a {model_task} model but data is {task_kind}: choose a matching model/data pair")
    datamodule = instantiate_node(cfg.data, "data")
    model = instantiate_node(cfg.model, "model")
    methods = build_methods(cfg)
    loss = build_loss(cfg)
    check_task([*methods, loss], task_kind)
    layerwise.check(cfg, methods)
    for method in methods:
        model = method.transform_model(model)
    args = dict(model=model, loss=loss, methods=methods, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
                scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True), total_steps=int(cfg.trainer.max_steps))
    if task_kind == "classify":
        from lrlab.tasks.classify import ClassifyTask

        return datamodule, ClassifyTask(**args, num_classes=int(cfg.data.info.num_classes))
    from lrlab.tasks.causal_lm import CausalLMTask

    return datamodule, CausalLMTask(**args)
