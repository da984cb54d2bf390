"""`lrlab estimate [overrides] [--json]`: the memory a run needs per device, before it runs.

Nothing is allocated and nothing downloaded: the model is built from the config on the meta
device (shapes and dtypes only), transformed by the run's methods (parametrization, adapter)
and, under a `*-true` precision, cast to that dtype as Lightning does before it builds the
optimizer. Then, per device:

- weights: every parameter and buffer of the model.
- optimizer state: exact, from the run's own path. The task's optimizer (the same builder,
  hyperparameters and routing) is built on the meta model and takes one step on meta gradients;
  `lrlab.optim.routing.state_bytes`, which `summary.json`'s `optimizer_state_bytes` reports,
  sums its state. This is the state after the first step (a projection optimizer's bases and
  low-rank moments, AdamW's full moments, ...).
- gradients: one per trainable parameter in its dtype; with `optimizer.layerwise=true` only
  the largest one (each is freed by its own step).
- activations (decoder-only LLaMA-family language models): what autograd saves for the
  backward pass, counted on HF `LlamaForCausalLM` (sdpa) with saved-tensor hooks: per token and
  layer 10·h + 4·i elements (norm inputs and outputs, q/k after RoPE, v, the attention output
  before and after the head merge, the MLP's gate, up, SiLU(gate) and their product) plus one
  log-sum-exp per head and two norm scales; 3·h for the final norm and the head's input; the
  loss in fp32: its log-softmax (B·S·V) plus, at the start of the backward pass, the gradients
  of the log-softmax and of the logits (2·B·S·V). Elements are 4 bytes under `32-true`, 2 under
  the bf16/16 precisions. With `model.activation_checkpointing=true` each layer keeps only its
  input (h per token) and one layer's activations are recomputed at a time.
- total: weights + optimizer state + gradients + activations + runtime. Lightning clears the
  previous step's gradients after the forward pass (its closure runs `training_step`, then
  `zero_grad`, then `backward`), so a step's activations meet a full set of gradients; the
  loss's backward-start transient comes after they are cleared, so the sum bounds the live
  bytes from above by at most min(gradients, B·S·V·4) (on CPU the allocator's retained memory
  fills part of that: see the README's measurements). The layer-wise step holds one gradient
  at a time. runtime: on CPU, where the run's peak is the process's resident set, the resident
  memory of this process with the training libraries loaded (measured here); 0 on accelerators
  (peak = allocated bytes).
- strategy: `data.batch_size` is per process (DDP replicates everything else); under `fsdp2`
  weights and gradients are divided by the number of processes, plus one decoder layer's full
  weights gathered at a time, and the optimizer state is what rank 0 holds
  (`lrlab.optim.state.fsdp2_state_bytes`: Adam's moments and the projection optimizers' P or
  row moments by rows, their replicated state whole), as its run reports it.
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from lrlab.errors import require

TRUE_PRECISIONS = {"bf16-true": "bfloat16", "16-true": "float16", "64-true": "float64"}


@dataclass
class Estimate:
    weights_bytes: int
    grads_bytes: int
    optimizer_state_bytes: int
    activations_bytes: int
    total_bytes: int
    runtime_bytes: int
    processes: int
    strategy: str


def meta_task(cfg):
    """The run's task, its model built on the meta device and cast as the precision casts it."""
    import torch
    from omegaconf import OmegaConf

    from lrlab.parts import build_loss, build_methods
    from lrlab.instantiate import instantiate_node
    from lrlab.tasks.causal_lm import CausalLMTask

    with torch.device("meta"):
        model = instantiate_node(cfg.model, "model")
        methods = build_methods(cfg)
        for method in methods:
            model = method.transform_model(model)
    dtype = TRUE_PRECISIONS.get(str(cfg.trainer.precision))
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    return CausalLMTask(model=model, loss=build_loss(cfg), methods=methods, optimizer=optimizer,
                        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
                        total_steps=int(cfg.trainer.max_steps))


def optimizer_state_bytes(task, fsdp2_processes: int = 0) -> int:
    """The state of the task's own optimizer after one step, stepped on meta gradients; with
    `fsdp2_processes`, what rank 0 holds of it under FSDP2 over that many processes."""
    import torch

    from lrlab.instantiate import build_optimizer
    from lrlab.optim.state import fsdp2_state_bytes, state_bytes

    settings = dict(task.optimizer_cfg)
    settings.pop("layerwise", None)
    optimizer = build_optimizer(task.model, list(task.methods), settings)
    for p in task.model.parameters():
        if p.requires_grad:
            p.grad = torch.empty_like(p)
    optimizer.step()
    for p in task.model.parameters():
        p.grad = None
    return fsdp2_state_bytes(optimizer, fsdp2_processes) if fsdp2_processes else state_bytes(optimizer)[0]


def activation_bytes(config, batch: int, seq_len: int, element: int, checkpointing: bool) -> int:
    """Saved activations plus the loss's peak, for a LLaMA-family config (see the module rule)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, vocab = config.num_attention_heads, config.vocab_size
    tokens = batch * seq_len
    per_layer = (10 * h + 4 * i + heads + 2) * element
    kept = layers * h * element + per_layer if checkpointing else layers * per_layer
    return tokens * (kept + 3 * h * element + 3 * vocab * 4)


def processes_of(trainer) -> int:
    devices = trainer.get("devices", 1)
    count = devices if isinstance(devices, int) else len(devices) if hasattr(devices, "__len__") and not isinstance(devices, str) else 1
    return count * int(trainer.get("num_nodes") or 1)


def resident_bytes() -> int:
    """This process's resident set now (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0
    import resource

    return pages * resource.getpagesize()


def estimate(cfg) -> Estimate:
    require(cfg.data.get("task") == "causal_lm", "model", cfg.model.get("_target_"),
            "lrlab estimate covers the LLaMA causal language models (model=llama_*)")
    task = meta_task(cfg)
    config = getattr(task.model, "config", None)
    if config is None and hasattr(task.model, "base_model"):  # a PEFT wrapper
        config = task.model.base_model.model.config
    require(config is not None and hasattr(config, "intermediate_size"), "model", cfg.model.get("_target_"),
            "lrlab estimate covers LLaMA-family decoder models")
    params = list(task.model.parameters())
    weights = sum(t.numel() * t.element_size() for t in (*params, *task.model.buffers()))
    trained = [p.numel() * p.element_size() for p in params if p.requires_grad]
    layerwise = bool(cfg.optimizer.get("layerwise", False))
    grads = max(trained, default=0) if layerwise else sum(trained)
    strategy = str(cfg.trainer.get("strategy", "auto"))
    processes = processes_of(cfg.trainer)
    sharded = strategy == "fsdp2" and processes > 1
    state = optimizer_state_bytes(task, processes if sharded else 0)
    precision = str(cfg.trainer.precision)
    element = 4 if precision.startswith(("32", "64")) else 2
    checkpointing = bool(cfg.model.get("activation_checkpointing", False))
    activations = activation_bytes(config, int(cfg.data.batch_size), int(cfg.data.seq_len), element, checkpointing)
    if sharded:
        layer = max((sum(p.numel() * p.element_size() for p in module.parameters())
                     for module in task.model.modules() if type(module).__name__.endswith("DecoderLayer")), default=0)
        weights = weights // processes + layer
        grads = grads // processes
    on_cpu = str(cfg.trainer.get("accelerator")) == "cpu"
    runtime = resident_bytes() if on_cpu else 0
    total = weights + state + grads + activations + runtime
    return Estimate(weights, grads, state, activations, total, runtime, processes, strategy)


def gib(n: int) -> str:
    return f"{n / 2**30:8.3f} GiB"


def report(cfg, found: Estimate) -> str:
    rows = [("weights", found.weights_bytes), ("gradients", found.grads_bytes),
            ("optimizer state", found.optimizer_state_bytes), ("activations", found.activations_bytes),
            ("runtime", found.runtime_bytes), ("total per device", found.total_bytes)]
    head = (f"model={cfg.model._target_.rsplit('.', 1)[0].rsplit('.', 1)[-1]} optimizer="
            f"{cfg.optimizer._target_.rsplit('.', 2)[-2]} batch {cfg.data.batch_size} x seq {cfg.data.seq_len}, "
            f"precision {cfg.trainer.precision}, {found.strategy} on {found.processes} process(es)")
    return "\n".join([head, *(f"  {name:<18}{gib(value)}  ({value} bytes)" for name, value in rows)])


def register(sub) -> None:
    parser = sub.add_parser("estimate", help="bytes per device of weights, gradients, optimizer state, "
                                             "activations and the total, from the config alone")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument("overrides", nargs=argparse.REMAINDER)


def command(args) -> None:
    """`lrlab estimate`: the CLI turns its ConfigError into one line (`lrlab.cli.guarded`)."""
    from lrlab.train import compose
    from lrlab.validate import check_config, check_structure

    cfg = compose(list(args.overrides), run_dir="/nonexistent")
    check_structure(cfg)
    check_config(cfg)
    found = estimate(cfg)
    print(json.dumps(asdict(found)) if args.json else report(cfg, found))
    sys.stdout.flush()
