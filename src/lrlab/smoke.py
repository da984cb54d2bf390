"""`lrlab smoke`: every preset, paper-scale ones included, runs in miniature on a CPU.

A preset keeps its model class, optimizer, methods, loss, callbacks, task and precision; what a
CPU cannot hold is swapped, and printed per preset:
- a LLaMA built from config shrinks to `LAYERS` layers × `HIDDEN` wide (heads kept dividing the
  width); pretrained models (MiniLM, the pretrained MLP/CNN) run at their real size on their
  local weights;
- hub data (`HFTextStream`, e.g. C4 + T5) reads a local text file (the standard library's
  source) through the same streaming code, with a byte-level BPE tokenizer trained on it
  (`VOCAB` tokens); data fetched from the registries is fetched once if missing; blocks, batches,
  sequences and the modular-arithmetic modulus shrink;
- a GPU trainer runs on one CPU device (bf16 precisions kept, 16-bit ones become bf16);
- every refresh / re-selection interval (`update_proj_gap`, `*_every`, `interval`, `period`)
  becomes `REFRESH` steps, and every rank (projection, factorisation) is capped at `RANK`.

Each preset runs `steps + 1` steps straight (a checkpoint at `steps`, a validation at the end),
then again from that checkpoint for the last step. With `steps` = 3 the resume falls between two
refreshes (at steps 2 and 4), so the state a refresh left must survive the checkpoint. It passes when the loss is finite, the
summary is complete and the resumed run's final metrics and weights equal the straight run's.
Presets run in parallel worker processes, each with its share of the cores.
"""

import fnmatch
import math
import os
import sysconfig
import time
import traceback
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lrlab import parallel

LAYERS, HIDDEN, HEADS = 2, 64, 4
VOCAB, SEQ_LEN, BATCH = 512, 32, 16  # EVA's incremental SVD needs 16 rows a batch
REFRESH = 2
RANK = 8
INTERVAL_KEYS = ("update_proj_gap", "interval", "period")
PRETRAINED = ("pretrained", "minilm", "smollm2")  # model builders that load weights: kept at their size


@dataclass
class Result:
    preset: str
    swaps: str
    ok: bool = False
    reason: str = ""
    seconds: float = 0.0
    log: str = field(default="", repr=False)


def select(patterns: list[str], presets: list[str]) -> list[str]:
    """The presets matching any pattern (shell-style, or a plain substring); all without patterns."""
    from lrlab.errors import ConfigError

    if not patterns:
        return presets
    chosen = []
    for pattern in patterns:
        matched = [p for p in presets if fnmatch.fnmatch(p, pattern) or pattern in p]
        if not matched:
            raise ConfigError("smoke", pattern, "matches no preset (`lrlab ls experiment` lists them)")
        chosen += [p for p in matched if p not in chosen]
    return chosen


def local_corpus(root: Path) -> tuple[Path, Path, Path]:
    """(train file, validation file, tokenizer dir): the standard library's source and a byte-level
    BPE tokenizer trained on it, made once under `root`."""
    train, val, tok_dir = root / "train.txt", root / "validation.txt", root / "tokenizer"
    if not tok_dir.exists():
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        root.mkdir(parents=True, exist_ok=True)
        sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-d]*.py"))[:24]
        texts = [p.read_text(errors="ignore") for p in sources]
        train.write_text("\n".join(texts[:20]))
        val.write_text("\n".join(texts[20:]))
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        tok.train([str(train)], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "</s>"]))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
        tmp = root / "tokenizer.partial"
        fast.save_pretrained(tmp)
        os.replace(tmp, tok_dir)
    return train, val, tok_dir


def choices(preset: str) -> dict[str, str]:
    """The option each group takes in `preset` (Hydra's runtime choices)."""
    from hydra import compose, initialize_config_dir

    from lrlab import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={preset}", "run_name=smoke"], return_hydra_config=True)
    return {k: str(v) for k, v in cfg.hydra.runtime.choices.items()}


def miniature(cfg, choice: dict[str, str], corpus: Path) -> tuple[list[str], list[str]]:
    """(overrides that shrink the composed preset `cfg`, what each swap was); `choice` names the
    option of each group."""
    overrides, swaps = [], []
    model, data, trainer = cfg.model, cfg.data, cfg.trainer
    if str(model._target_).endswith("llama.build"):
        heads = math.gcd(int(model.num_attention_heads), HEADS)
        overrides += [f"model.num_hidden_layers={LAYERS}", f"model.hidden_size={HIDDEN}",
                      f"model.intermediate_size={2 * HIDDEN}", f"model.num_attention_heads={heads}"]
        if model.get("num_key_value_heads"):
            overrides.append(f"model.num_key_value_heads={math.gcd(int(model.num_key_value_heads), heads)}")
        swaps.append(f"{choice['model']} → {LAYERS} layers × {HIDDEN}")
    elif any(word in str(model._target_) for word in PRETRAINED):
        swaps.append(f"{choice['model']} at its real size (pretrained weights)")
    if str(data._target_).endswith("HFTextStream"):
        train, val, tok = local_corpus(corpus)
        overrides += ["data.dataset=text", "data.name=null", f"data.tokenizer={tok}", f"data.vocab_size={VOCAB}",
                      f"++data.data_files={{train:'{train}',validation:'{val}'}}", "data.val_blocks=8"]
        swaps.append(f"{choice['data']} → stdlib text (same HF stream), local BPE tokenizer ({VOCAB})")
        if data.get("num_workers"):
            overrides.append("data.num_workers=0")  # one local file: one reader
            swaps.append(f"{data.num_workers} loader workers → 0")
    for key, value in (("seq_len", SEQ_LEN), ("max_length", SEQ_LEN), ("batch_size", BATCH)):
        if key in data and data[key] is not None and int(data[key]) > value:
            overrides.append(f"data.{key}={value}")
    for key, value in (("max_tokens", 20000), ("per_class", 4), ("train_limit", 512)):
        if key in data:
            overrides.append(f"data.{key}={value}")
    if "p" in data and int(data.p) > 13:
        overrides.append("data.p=13")
    if trainer.accelerator not in ("cpu", "auto") or trainer.get("strategy") not in (None, "auto"):
        overrides += ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto"]
        swaps.append(f"trainer {choice['trainer']} → 1 CPU device")
    if str(trainer.precision).startswith("16"):
        overrides.append(f"trainer.precision={str(trainer.precision).replace('16', 'bf16', 1)}")
    overrides += interval_overrides(cfg)
    return overrides, swaps


def interval_overrides(cfg) -> list[str]:
    """Every refresh / re-selection interval of the optimizer and methods → REFRESH; every rank
    (the optimizer's projection, a parametrization's factors) capped at RANK."""
    overrides = []
    nodes = {"optimizer": cfg.optimizer, "adapter": cfg.get("adapter") or {},
             "parametrization": cfg.get("parametrization") or {},
             **{f"regularizer.{k}": v for k, v in (cfg.get("regularizer") or {}).items()}}
    for prefix, node in nodes.items():
        for key, value in node.items():
            if (key in INTERVAL_KEYS or key.endswith("_every")) and isinstance(value, int) and value > REFRESH:
                overrides.append(f"{prefix}.{key}={REFRESH}")
    for prefix, node in nodes.items():
        rank = node.get("rank")
        if isinstance(rank, int) and rank > RANK:
            overrides.append(f"{prefix}.rank={RANK}")
    return overrides


def run_one(preset: str, out: Path, corpus: Path, steps: int, resumed_steps: int = 1) -> Result:
    """A straight run of `steps + resumed_steps` steps with a checkpoint at `steps`, then a run
    resumed from that checkpoint for the last `resumed_steps`; `corpus` holds `local_corpus`."""
    import warnings

    from lrlab.data.fetch import fetch
    from lrlab.errors import DataMissingError
    from lrlab.train import compose, run

    warnings.filterwarnings("ignore", message=".*dirpath has changed.*")  # the resumed run's own checkpoint dir
    started = time.perf_counter()
    result = Result(preset, "")
    try:
        shrink, swaps = miniature(compose([f"experiment={preset}"], run_dir=str(out / "probe")), choices(preset), corpus)
        total = steps + resumed_steps
        result.swaps = ", ".join([*swaps, f"{total} steps"])
        common = [f"experiment={preset}", *shrink, f"trainer.max_steps={total}", f"trainer.val_check_interval={total}",
                  "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1", "logger=none",
                  f"callbacks.checkpoint.every_n_train_steps={steps}", "callbacks.checkpoint.save_top_k=-1"]
        for attempt in (0, 1):
            try:
                straight = run(compose(common, run_dir=str(out / "straight")))
                break
            except DataMissingError as missing:
                if attempt:
                    raise
                fetch(missing.value)
        checkpoint = out / "straight" / "checkpoints" / f"step{steps:06d}.ckpt"
        resumed = run(compose([*common, f"ckpt_path={checkpoint}"], run_dir=str(out / "resumed")))
        result.reason = verdict(straight, resumed, out)
        result.ok = not result.reason
    except Exception as err:  # a broken preset may fail anywhere; report it and go on
        result.reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        result.log = traceback.format_exc()
    result.seconds = time.perf_counter() - started
    return result


def verdict(straight: dict, resumed: dict, out: Path) -> str:
    """'' when the runs pass; otherwise why not. Both runs validate at their last step, so the
    resumed run's final metrics must equal the straight run's, and so must its last weights."""
    import torch

    from lrlab.callbacks.summary import KEYS
    from lrlab.resume import load_whole

    for name, summary in (("straight", straight), ("resumed", resumed)):
        if summary is None or set(summary) != set(KEYS):
            return f"{name} run's summary is incomplete"
        if summary["status"] != "completed":
            return f"{name} run ended {summary['status']}"
        final = summary["metrics"]["final"]
        if not final or not all(math.isfinite(v) for v in final.values()):
            return f"{name} run's validation metrics are missing or not finite: {final}"
    if resumed["metrics"]["final"] != straight["metrics"]["final"]:
        return f"the resumed run's metrics {resumed['metrics']['final']} differ from {straight['metrics']['final']}"
    last = [load_whole(out / run / "checkpoints" / "last.ckpt")
            for run in ("straight", "resumed")]
    if last[0]["global_step"] != last[1]["global_step"]:
        return f"last.ckpt holds step {last[0]['global_step']} in the straight run, {last[1]['global_step']} resumed"
    differ = [k for k in last[0]["state_dict"] if not torch.equal(last[0]["state_dict"][k], last[1]["state_dict"][k])]
    return f"the resumed weights differ from the straight run's in {differ[0]} (+{len(differ) - 1} more)" if differ else ""


def run_all(presets: list[str], out: Path, steps: int = 3, jobs: int | None = None, report=print) -> list[Result]:
    """Run `presets` in `jobs` worker processes (each with cores // jobs threads); `report` gets a
    line per preset as it finishes."""
    jobs = max(1, min(jobs or parallel.cores(), len(presets)))
    corpus = out / "corpus"
    local_corpus(corpus)
    results = []
    with parallel.worker_pool(jobs) as pool:
        futures = {pool.submit(run_one, p, out / p.replace("/", "__"), corpus, steps): p for p in presets}
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            report(f"{'ok  ' if result.ok else 'FAIL'} {result.preset}: {result.swaps} ({result.seconds:.1f} s)"
                   + ("" if result.ok else f"\n     {result.reason}"))
    return sorted(results, key=lambda r: presets.index(r.preset))


def junit_xml(results: list[Result], seconds: float) -> str:
    failures = sum(not r.ok for r in results)
    lines = ['<?xml version="1.0" encoding="utf-8"?>',
             f'<testsuite name="lrlab smoke" tests="{len(results)}" failures="{failures}" errors="0" '
             f'time="{seconds:.3f}">']
    for r in results:
        lines.append(f'  <testcase classname="lrlab.smoke" name={quoteattr(r.preset)} time="{r.seconds:.3f}">')
        lines.append(f"    <system-out>{escape(r.swaps)}</system-out>")
        if not r.ok:
            lines.append(f"    <failure message={quoteattr(r.reason)}>{escape(r.log or r.reason)}</failure>")
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"


def escape(text: str) -> str:
    from xml.sax.saxutils import escape as xml_escape

    return xml_escape(text)
