"""The streaming HF-dataset path (used for C4 + T5 on GPU machines), run on local files."""

from pathlib import Path

import pytest
import torch
from conftest import write_corpus

from lrlab.train import run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Local text files and a BPE tokenizer without a pad token (EOS pads)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def overrides(corpus: Path, *extra: str) -> list[str]:
    return ["data=hf_text", "data.dataset=text", f"data.tokenizer={corpus / 'tokenizer'}", "data.vocab_size=320",
            f"data.data_files={{train:'{corpus / 'train.txt'}',validation:'{corpus / 'val.txt'}'}}",
            "data.seq_len=32", "data.batch_size=4", "data.val_blocks=8", *extra]


def test_stream_packs_blocks(corpus):
    from lrlab.data.hf_stream import HFTextStream

    dm = HFTextStream(dataset="text", tokenizer=str(corpus / "tokenizer"), vocab_size=320, seq_len=16, batch_size=2,
                      data_files={"train": str(corpus / "train.txt"), "validation": str(corpus / "val.txt")})
    dm.setup()
    blocks = list(dm._stream("train", 5))
    assert len(blocks) == 5 and all(b["input_ids"].shape == (16,) for b in blocks)
    assert [int(b["index"]) for b in blocks] == list(range(5))
    stream = dm._stream("train", 5)
    stream.skip = 3
    assert [int(b["index"]) for b in stream] == [3, 4]


def stream_module(corpus, **kwargs):
    from lrlab.data.hf_stream import HFTextStream

    dm = HFTextStream(dataset="text", tokenizer=str(corpus / "tokenizer"), vocab_size=320,
                      data_files={"train": str(corpus / "train.txt"), "validation": str(corpus / "val.txt")}, **kwargs)
    dm.setup()
    return dm


def first_documents(corpus, count: int) -> list[str]:
    """The text loader's rows: the file's lines; the stream skips empty ones."""
    return [line for line in (corpus / "train.txt").read_text().splitlines() if line][:count]


def test_unpacked_rows_are_one_truncated_document_padded_and_masked(corpus):
    """GaLore/Fira: each row is one document's tokens, cut so that EOS ends it, then padding whose
    labels are -100."""
    dm = stream_module(corpus, seq_len=24, batch_size=2, pack=False)
    tok, eos = dm.tokenizer, dm.tokenizer.eos_token_id
    rows = list(dm._stream("train", 40))
    assert len(rows) == 40
    padded = 0
    for row, text in zip(rows, first_documents(corpus, 40)):
        ids = tok(text, add_special_tokens=False)["input_ids"][:23] + [eos]
        length = len(ids)
        assert row["input_ids"].shape == (24,) and row["input_ids"][:length].tolist() == ids
        assert row["labels"][:length].tolist() == ids and (row["labels"][length:] == -100).all()
        padded += length < 24
    assert 0 < padded < 40  # both short (padded) and long (truncated) documents were seen


def test_padding_takes_no_part_in_the_loss(corpus):
    """Through the model: the loss equals the cross-entropy over the real next tokens only, and
    changing what the padding holds leaves it unchanged (causal attention, right padding)."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from lrlab.models.llama import build

    dm = stream_module(corpus, seq_len=24, batch_size=4, pack=False)
    batch = next(iter(DataLoader(dm._stream("train", 8), batch_size=4)))
    torch.manual_seed(0)
    model = build(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    ids, labels = batch["input_ids"], batch["labels"]
    assert (labels == -100).any()
    loss = model(input_ids=ids, labels=labels).loss
    logits = model(input_ids=ids).logits[:, :-1]
    targets = labels[:, 1:]
    real = targets != -100
    assert torch.allclose(loss, F.cross_entropy(logits[real], targets[real]), rtol=1e-6)
    scrambled = torch.where(labels == -100, torch.randint(0, 300, ids.shape), ids)
    assert torch.allclose(model(input_ids=scrambled, labels=labels).loss, loss, rtol=1e-6)


def test_validation_counts_non_padding_tokens(corpus):
    """val_tokens: rows until their real tokens reach the count, the row that reaches it included."""
    dm = stream_module(corpus, seq_len=24, batch_size=4, pack=False, val_blocks=None, val_tokens=500)
    rows = list(dm.val_dataloader().dataset)
    lengths = [int((r["labels"] != -100).sum()) for r in rows]
    assert sum(lengths[:-1]) < 500 <= sum(lengths)


def loader_states(value) -> list[dict]:
    """The training loader's states inside a Lightning checkpoint (the dicts holding "blocks")."""
    if isinstance(value, dict):
        return ([value] if "blocks" in value else []) + [s for v in value.values() for s in loader_states(v)]
    if isinstance(value, list):
        return [s for v in value for s in loader_states(v)]
    return []


def test_runner_trains_and_resumes_on_a_stream(make_cfg, tmp_path, corpus, capsys):
    """From the saved reader positions (the checkpoint as written) and, with them removed (a
    checkpoint of an older version), by re-reading: both resumed runs end on the straight run's
    parameters."""
    n = 4
    common = [*overrides(corpus), f"trainer.max_steps={2 * n}", "trainer.val_check_interval=4",
              f"callbacks.checkpoint.every_n_train_steps={n}", "callbacks.checkpoint.save_top_k=-1"]
    summary = run(make_cfg(*common, run="straight"))
    assert summary["status"] == "completed" and summary["throughput"]["tokens_per_second"] > 0
    mid = tmp_path / "straight" / "checkpoints" / f"step{n:06d}.ckpt"
    checkpoint = torch.load(mid, weights_only=True)
    [state] = loader_states(checkpoint)
    assert state["blocks"] == n * 4 and state["stream"]["batches"] == n
    state.pop("stream")
    torch.save(checkpoint, tmp_path / "without_position.ckpt")
    capsys.readouterr()
    run(make_cfg(*common, f"ckpt_path={mid}", run="resumed"))
    assert "restoring the saved reader positions after 16 blocks" in capsys.readouterr().err
    run(make_cfg(*common, f"ckpt_path={tmp_path / 'without_position.ckpt'}", run="reread"))
    assert ("re-reading the stream and skipping the 16 consumed blocks (the checkpoint holds no reader position)"
            in capsys.readouterr().err)
    for resumed in ("resumed", "reread"):
        assert _same_parameters(tmp_path / "straight", tmp_path / resumed), resumed


def _same_parameters(run_a: Path, run_b: Path) -> bool:
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in (run_a, run_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unloadable_tokenizer_is_one_clear_error(cli, tmp_path, corpus):
    code, _, err = cli("train", *overrides(corpus)[:-4], "data.tokenizer=/no/such/tokenizer", "debug=smoke",
                       "logger=none")
    assert code == 2 and "data.tokenizer" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("train_text, key", [("", "data.dataset"), ('{"body": "some words"}\n', "data.text_field")],
                         ids=["empty_stream", "missing_text_field"])
def test_stream_without_text_is_refused(cli, tmp_path, corpus, train_text, key):
    """An empty stream used to start empty epochs forever; a missing field raised a KeyError."""
    data = tmp_path / ("train.jsonl" if train_text else "train.txt")
    data.write_text(train_text)
    kind = "json" if train_text else "text"
    code, _, err = cli("train", "data=hf_text", f"data.dataset={kind}", f"data.tokenizer={corpus / 'tokenizer'}",
                       "data.vocab_size=320", f"data.data_files={{train:'{data}',validation:'{data}'}}",
                       "data.seq_len=32", "data.batch_size=4", "debug=smoke", "logger=none", "run_name=stream")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {key}="), err[-2000:]
    assert not (tmp_path / "outputs").exists()


def test_local_files_without_a_validation_split_hold_out_every_kth_document(corpus):
    """`data.data_files=FILE` (the README's way): every 4th document (val_fraction 0.25)
    validates, the others train; together they are the file's documents, each once."""
    from lrlab.data.hf_stream import HFTextStream

    dm = HFTextStream(dataset="text", tokenizer=str(corpus / "tokenizer"), vocab_size=320, seq_len=16,
                      data_files=str(corpus / "train.txt"), val_fraction=0.25)
    dm.setup()
    lines = (corpus / "train.txt").read_text().splitlines()
    train, val = list(dm._stream("train", None).documents()), list(dm._stream("validation", None).documents())
    assert val == [line for i, line in enumerate(lines) if i % 4 == 3 and line]
    assert train == [line for i, line in enumerate(lines) if i % 4 != 3 and line]
    assert next(iter(dm.val_dataloader()))["input_ids"].shape == (32, 16)


def test_a_run_on_one_local_file_validates_on_its_held_out_part(corpus, make_cfg):
    summary = run(make_cfg("data=hf_text", "data.dataset=text", f"data.tokenizer={corpus / 'tokenizer'}",
                           "data.vocab_size=320", f"data.data_files={corpus / 'train.txt'}", "data.seq_len=32",
                           "data.batch_size=4", "data.val_blocks=8", "debug=smoke"))
    assert summary["status"] == "completed" and summary["metrics"]["final"]["val/loss"] > 0


def sharded_module(corpus, files: int, **kwargs):
    """120 lines of the training text cut into `files` files (a sharded dataset, as C4's 1024), one
    document a row."""
    from lrlab.data.hf_stream import HFTextStream

    lines = [line for line in (corpus / "train.txt").read_text().splitlines() if line.strip()][:120]
    paths = []
    for k in range(files):
        path = corpus / f"shard{files}_{k}.txt"
        path.write_text("\n".join(lines[k::files]))
        paths.append(str(path))
    dm = HFTextStream(dataset="text", tokenizer=str(corpus / "tokenizer"), vocab_size=320, seq_len=16, batch_size=3,
                      pack=False, data_files={"train": paths, "validation": str(corpus / "val.txt")}, **kwargs)
    dm.setup()
    return dm


def loader_rows(dm, consumed: int = 0, limit: int | None = None) -> list[tuple[int, ...]]:
    from lrlab.data.hf_stream import StreamLoader

    stream = dm._stream(dm.split, None)
    loader = StreamLoader(stream, dm.batch_size, lambda: consumed, num_workers=dm.num_workers)
    loader.load_state_dict({"blocks": consumed * dm.batch_size})
    rows = []
    for j, batch in enumerate(loader):
        if limit is not None and j == limit:
            break
        rows += [tuple(row.tolist()) for row in batch["input_ids"]]
    return rows


def test_loader_workers_read_every_document_once(corpus):
    """Three workers over six files: the rows are those of one process, each once, and a loader
    resumed after 5 batches delivers exactly the rows the straight one delivers after them."""
    single = loader_rows(sharded_module(corpus, 6))
    workers = sharded_module(corpus, 6, num_workers=3)
    rows = loader_rows(workers)
    assert len(rows) == len(single) > 30 and sorted(rows) == sorted(single)
    assert len(set(rows)) == len(set(single))  # no document read twice (as many distinct as one process has)
    assert loader_rows(workers, consumed=5) == rows[5 * workers.batch_size:]


def test_more_workers_than_files_is_refused(corpus):
    from lrlab.errors import ConfigError

    with pytest.raises(ConfigError, match="data.num_workers.*at most 2"):
        sharded_module(corpus, 2, num_workers=3).train_dataloader()


def resume_module(corpus, pack: bool, num_workers: int = 0):
    """600 lines of the training text in 4 files (150 documents each, so a reader's position passes
    the library's batches of 64 and the files' ends); packed rows of 4 tokens (a document often
    spans several, so a checkpoint falls inside a document) or padded rows of 16."""
    from lrlab.data.hf_stream import HFTextStream

    lines = [line for line in (corpus / "train.txt").read_text().splitlines() if line.strip()][:600]
    paths = []
    for k in range(4):
        path = corpus / f"resume_{k}.txt"
        path.write_text("\n".join(lines[k::4]))
        paths.append(str(path))
    dm = HFTextStream(dataset="text", tokenizer=str(corpus / "tokenizer"), vocab_size=320, seq_len=4 if pack else 16,
                      batch_size=3, pack=pack, num_workers=num_workers,
                      data_files={"train": paths, "validation": str(corpus / "val.txt")})
    dm.setup()
    return dm


def straight_run(dm, cuts: tuple[int, ...]) -> tuple[list[tuple[int, ...]], dict[int, dict]]:
    """Every row of a straight pass, and the loader's state once `consumed` batches are consumed
    for each `consumed` in `cuts` (taken as Lightning does, with the next batch already fetched),
    through torch.save and torch.load(weights_only=True)."""
    import io

    from lrlab.data.hf_stream import StreamLoader

    progress = [0]
    loader = StreamLoader(dm._stream(dm.split, None), dm.batch_size, lambda: progress[0], num_workers=dm.num_workers)
    rows, states = [], {}
    for j, batch in enumerate(loader):
        rows += [tuple(row.tolist()) for row in batch["input_ids"]]
        if j in cuts:
            progress[0] = j
            buffer = io.BytesIO()
            torch.save(loader.state_dict(), buffer)
            states[j] = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    return rows, states


def resumed_rows(dm, state: dict) -> list[tuple[int, ...]]:
    from lrlab.data.hf_stream import StreamLoader

    loader = StreamLoader(dm._stream(dm.split, None), dm.batch_size, lambda: 0, num_workers=dm.num_workers)
    loader.load_state_dict(state)
    return [tuple(row.tolist()) for batch in loader for row in batch["input_ids"]]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_a_loader_resumed_from_reader_positions_continues_the_straight_rows(corpus, capsys, pack, workers):
    """At several checkpoints (one inside the library's first batch of 64 documents, others after
    it), the resumed loader's rows are the straight loader's rows after the consumed ones, in order;
    packed, some checkpoint falls inside a document whose rest fills a whole row."""
    dm = resume_module(corpus, pack, workers)
    cuts = (3, 41, 150)
    rows, states = straight_run(dm, cuts)
    assert len(rows) > (max(cuts) + 10) * dm.batch_size
    buffers = []
    for consumed in cuts:
        state = states[consumed]
        assert state["stream"]["batches"] == consumed and len(state["stream"]["readers"]) == max(1, workers)
        buffers += [len(reader["buffer"]) for reader in state["stream"]["readers"]]
        capsys.readouterr()
        assert resumed_rows(dm, state) == rows[consumed * dm.batch_size:], consumed
        assert "restoring the saved reader positions" in capsys.readouterr().err
    assert max(buffers) >= dm.seq_len if pack else max(buffers) == 0


class CountingTokenizer:
    """The real tokenizer, counting the documents it is called on."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, text, **kwargs):
        self.calls += 1
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_a_resume_from_reader_positions_tokenizes_no_consumed_document(corpus, pack):
    """Tokenizer calls of a resumed pass: from the saved positions, exactly those of the straight pass
    after the checkpoint's batch (a document split across it is not tokenized again); re-reading
    (the state removed), every document of the straight pass again."""
    from lrlab.data.hf_stream import StreamLoader

    dm, consumed = resume_module(corpus, pack), 41
    dm.tokenizer = CountingTokenizer(dm.tokenizer)
    loader = StreamLoader(dm._stream(dm.split, None), dm.batch_size, lambda: consumed)
    calls, state = [], None
    for j, _ in enumerate(loader):
        calls.append(dm.tokenizer.calls)
        if j == consumed:
            state = loader.state_dict()
    assert 0 < calls[consumed - 1] < calls[-1]
    for kept, expected in (({"blocks", "stream"}, calls[-1] - calls[consumed - 1]), ({"blocks"}, calls[-1])):
        dm.tokenizer.calls = 0
        resumed_rows(dm, {key: state[key] for key in kept})
        assert dm.tokenizer.calls == expected, kept


def test_without_valid_reader_positions_the_loader_re_reads(corpus, capsys):
    """A checkpoint without positions, with another rank's (under DDP the checkpoint's writer saves
    its own), or saved under another loader-worker count (whose readers split the files otherwise),
    resumes by re-reading the stream and skipping: the rows after the consumed ones of the stream it
    now reads, and a note saying why."""
    dm = resume_module(corpus, True, 2)
    rows, states = straight_run(dm, (41,))
    capsys.readouterr()
    assert resumed_rows(dm, {"blocks": states[41]["blocks"]}) == rows[41 * dm.batch_size:]
    assert "skipping the 123 consumed blocks (the checkpoint holds no reader position)" in capsys.readouterr().err
    other_rank = {**states[41], "stream": {**states[41]["stream"], "rank": 1}}
    assert resumed_rows(dm, other_rank) == rows[41 * dm.batch_size:]
    note = "skipping the 123 consumed blocks (the checkpoint holds rank 1's reader positions)"
    assert note in capsys.readouterr().err
    one_reader = resume_module(corpus, True, 0)
    assert resumed_rows(one_reader, states[41]) == straight_run(one_reader, ())[0][41 * dm.batch_size:]
    assert "skipping the 123 consumed blocks (the data config changed)" in capsys.readouterr().err


def test_a_run_with_loader_workers_resumed_from_reader_positions_ends_on_the_straight_parameters(
        make_cfg, tmp_path, corpus, capsys):
    resume_module(corpus, False)  # writes the 4 files
    files = ",".join(f"'{corpus / f'resume_{k}.txt'}'" for k in range(4))
    common = [*overrides(corpus), f"data.data_files={{train:[{files}],validation:'{corpus / 'val.txt'}'}}",
              "data.pack=false", "data.num_workers=2", "trainer.max_steps=8", "trainer.val_check_interval=8",
              "callbacks.checkpoint.every_n_train_steps=3", "callbacks.checkpoint.save_top_k=-1"]
    run(make_cfg(*common, run="straight"))
    capsys.readouterr()
    run(make_cfg(*common, f"ckpt_path={tmp_path / 'straight' / 'checkpoints' / 'step000003.ckpt'}", run="resumed"))
    assert "restoring the saved reader positions after 12 blocks" in capsys.readouterr().err
    assert _same_parameters(tmp_path / "straight", tmp_path / "resumed")
