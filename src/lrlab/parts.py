"""Config → the task's parts: the model, then the methods in order (parametrization, adapter,
regularizers) each transforming it, the loss, and the optimizer and schedule settings. Used by
`lrlab.build` for a run and by a task that rebuilds itself from its checkpoint's config.
Everything is built through `lrlab.instantiate` (every build error becomes one `ConfigError` line).
"""

from omegaconf import DictConfig, OmegaConf

from lrlab.errors import require
from lrlab.instantiate import instantiate_node
from lrlab.optim import layerwise
from lrlab.protocol import Loss, Method


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


def check_strategy(methods: list[Method], strategy: str | None) -> None:
    if strategy != "fsdp2":
        return
    for method in methods:
        require(method.shardable, method.config_key, method.name,
                "holds whole-weight state that FSDP2 cannot shard: use trainer=ddp (trainer=fsdp2 refuses it)")


def task_parts(cfg: DictConfig) -> dict:
    """The task's parts: the model transformed by its methods, the methods, the loss, the
    optimizer and schedule settings (the task's constructor arguments)."""
    model = instantiate_node(cfg.model, "model")
    methods = build_methods(cfg)
    loss = build_loss(cfg)
    check_task([*methods, loss], cfg.data.get("task"))
    check_strategy([*methods, loss], (cfg.get("trainer") or {}).get("strategy"))
    layerwise.check(cfg, methods)
    for method in methods:
        model = method.transform_model(model)
    parts = dict(model=model, loss=loss, methods=methods, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
                 scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True), total_steps=int(cfg.trainer.max_steps))
    if cfg.data.get("task") == "classify":
        parts["num_classes"] = int(cfg.data.info.num_classes)
    return parts
