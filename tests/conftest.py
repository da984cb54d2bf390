import hashlib
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CI", "true")  # no progress bars in test output


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs `-n auto`), each worker gets its share of the cores,
    as lrlab gives each of its parallel jobs: N workers with a thread per core each would run N²
    threads."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        from lrlab.parallel import share, use_threads

        use_threads(share(int(workers)))


@pytest.fixture(autouse=True)
def no_hydra_job_left_over():
    """An in-process `lrlab train` leaves Hydra's job config (mode, job number) set for the whole
    process; a later test's `run()` must not read it as its own."""
    yield
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) with the run dir inside tmp_path and loggers off unless asked."""
    from lrlab.train import compose

    def make(*overrides, run="run", logger="none"):
        return compose([f"logger={logger}", *overrides], run_dir=str(tmp_path / run))

    return make


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run `lrlab ARGS` in-process from tmp_path; returns (exit code, stdout, stderr)."""
    from lrlab.cli import main

    monkeypatch.chdir(tmp_path)

    def call(*args):
        code = 0
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(scope="session")
def wordnet():
    """The WordNet glosses in the data cache (fetched once from Debian's wordnet-base if missing)."""
    from lrlab.data.fetch import fetch

    return fetch("wordnet")


class TwoLayer(torch.nn.Module):
    """An embedding, an attention-named and an MLP-named Linear (what the low-rank optimizers project)
    and a norm: the smallest model that has every kind of parameter group."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 16)
        self.attn = torch.nn.Linear(16, 24, dtype=dtype)
        self.mlp = torch.nn.Linear(24, 16, dtype=dtype)
        self.norm = torch.nn.LayerNorm(16)


TARGETS = ["body.1", "body.3"]  # the tiny MLP's Linear(16, 32) and Linear(32, 32)


@pytest.fixture
def tiny():
    """A fresh MLP 16 -> 32 -> 32 -> 3 drawn with seed 0 (the same weights at every call)."""
    import torch

    from lrlab.models.classifier import mlp

    def make():
        torch.manual_seed(0)
        return mlp(16, 3, hidden=(32, 32))

    return make


@pytest.fixture
def method():
    """method(group, name, **settings): the `group=name` config node with `settings` overridden,
    built as the runner builds it (e.g. `method("adapter", "lora", r=4)`)."""
    from lrlab.build import instantiate_node
    from lrlab.train import compose

    def make(group, name, **settings):
        node = dict(compose([f"{group}={name}"], run_dir="unused")[group])
        return instantiate_node({**node, **settings}, group)

    return make


@pytest.fixture
def make_task():
    """make_task(model, methods=(), loss=None): a classification task around `model`, as built by the runner."""
    from lrlab.losses.cross_entropy import CrossEntropy
    from lrlab.tasks.classify import ClassifyTask

    def make(model, methods=(), loss=None, num_classes=3):
        return ClassifyTask(model, loss=loss or CrossEntropy(), methods=list(methods), optimizer={}, scheduler={},
                            total_steps=1, num_classes=num_classes)

    return make


def tree_digest(root: Path) -> str:
    """Every path under `root` (folders included) with the bytes of every file."""
    digest = hashlib.sha256()
    if root.exists():
        for path in sorted(root.rglob("*")):
            digest.update(str(path.relative_to(root)).encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def write_corpus(root: Path, pad_token: str | None = None) -> Path:
    """Two local text files under `root` (one stdlib module per line: 10 train, 2 validation) and
    a byte-level BPE (300 tokens, EOS `</s>`) trained on them, saved as an HF tokenizer directory;
    without `pad_token` the tokenizer has none (the EOS-as-pad path)."""
    import sysconfig

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(errors="ignore") for p in sorted(stdlib.glob("[a-c]*.py"))[:12]]
    (root / "train.txt").write_text("\n".join(texts[:10]))
    (root / "val.txt").write_text("\n".join(texts[10:]))
    specials = ["<unk>", "</s>", *([pad_token] if pad_token else [])]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([str(root / "train.txt")], trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token=pad_token)
    fast.save_pretrained(root / "tokenizer")
    return root
