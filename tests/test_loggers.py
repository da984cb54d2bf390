"""Loggers get the experiment: the composed config as hyperparameters in every logger's files, a
multirun job's wandb run named after its job and grouped by its sweep, and checkpoints that
rebuild their task (`Task.load_from_checkpoint`)."""

import struct
from pathlib import Path

import torch
import yaml

SMOKE = ["experiment=baseline/digits_mlp_adamw", "debug=smoke", "optimizer.lr=0.0025"]
WANDB_BLOCK, WANDB_HEADER = 32768, 7


def wandb_records(run_dir: Path, needed=("run", "config"), wait_s: float = 60.0) -> list:
    """The records of the run's offline wandb transaction log, once it holds a record of each
    `needed` type: the log is written by wandb's own service process, which may still be writing
    it when the run has returned (seen on a loaded machine)."""
    import time

    deadline = time.time() + wait_s
    while True:
        found = parse_wandb_log(run_dir)
        kinds = {r.WhichOneof("record_type") for r in found}
        if set(needed) <= kinds or time.time() > deadline:
            return found
        time.sleep(0.5)


def parse_wandb_log(run_dir: Path) -> list:
    """`run-<id>.wandb`: a W&B header, then LevelDB-log blocks of protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    paths = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    if not paths:
        return []
    [path] = paths
    data, found, pending = path.read_bytes(), [], b""
    if len(data) < 7:  # not written yet
        return []
    assert data[:4] == b":W&B"
    pos = 7
    while pos + WANDB_HEADER <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < WANDB_HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + WANDB_HEADER])
        if pos + WANDB_HEADER + length > len(data):  # a record still being written
            break
        pending, pos = pending + data[pos + WANDB_HEADER:pos + WANDB_HEADER + length], pos + WANDB_HEADER + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def wandb_config(records: list) -> dict:
    import json

    return {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
            for item in r.config.update}


def test_every_logger_gets_the_config_as_hyperparameters(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lrlab.train import run

    run(make_cfg(*SMOKE, logger="[csv,tensorboard,wandb]"))
    run_dir = tmp_path / "run"
    csv = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert csv["optimizer"]["lr"] == 0.0025 and csv["model"]["_target_"] == "lrlab.models.classifier.mlp"
    board = yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text())
    assert board["optimizer"]["lr"] == 0.0025
    composed = set(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert set(csv) == set(board) == composed  # the config's groups, and nothing else (no nested copy)
    [events] = run_dir.glob("tensorboard/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert "_hparams_/session_start_info" in accumulator.summary_metadata
    start = accumulator.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    assert b"optimizer/lr" in start and b"lrlab.models.classifier.mlp" in start
    config = wandb_config(wandb_records(run_dir))
    assert config["optimizer"]["lr"] == 0.0025 and config["seed"] == 0 and config["data"]["batch_size"] == 64


def test_multirun_wandb_runs_are_named_by_job_and_grouped_by_sweep(cli, tmp_path):
    code, _, err = cli("train", "-m", *SMOKE, "logger=wandb", "seed=0,1", "run_name=grid")
    assert code == 0, err
    for job in (0, 1):
        [run] = [r.run for r in wandb_records(tmp_path / "outputs" / "multiruns" / "grid" / str(job))
                 if r.WhichOneof("record_type") == "run"]
        assert run.run_group == "grid" and run.display_name.startswith(f"grid/{job} ")
        assert f"seed={job}" in run.display_name and "run_name" not in run.display_name


def test_a_single_run_keeps_its_name_and_no_group(make_cfg, tmp_path):
    from lrlab.train import run

    run(make_cfg(*SMOKE, "run_name=alone", logger="wandb"))
    [record] = [r.run for r in wandb_records(tmp_path / "run") if r.WhichOneof("record_type") == "run"]
    assert record.display_name == "alone" and record.run_group == ""


def test_a_checkpoint_rebuilds_its_task(make_cfg, tmp_path):
    """`Task.load_from_checkpoint(path)` with nothing else: the config stored in the checkpoint
    (a plain dict, loadable with weights_only) builds the task, then the weights load; its
    predictions equal the trained model's."""
    from lrlab.tasks.classify import ClassifyTask
    from lrlab.train import compose, run
    from lrlab.build import build_parts

    run(make_cfg(*SMOKE, "adapter=lora", "model=mlp_pretrained", "data.classes=[5,6,7,8,9]"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stored = torch.load(path, weights_only=True)
    assert stored["hyper_parameters"]["config"]["adapter"]["r"] == 8
    task = ClassifyTask.load_from_checkpoint(path)
    assert type(task.model).__name__ == "PeftModel"
    cfg = compose([*SMOKE, "adapter=lora", "model=mlp_pretrained", "data.classes=[5,6,7,8,9]", "logger=none"],
                  run_dir=str(tmp_path / "other"))
    _, fresh = build_parts(cfg)
    fresh.load_state_dict(stored["state_dict"])
    x = torch.randn(5, 64)
    task.eval(), fresh.eval()
    assert torch.equal(task.model(x)["logits"], fresh.model(x)["logits"])
    assert not torch.equal(ClassifyTask(config=stored["hyper_parameters"]["config"]).eval().model(x)["logits"],
                           task.model(x)["logits"])


def test_a_language_model_checkpoint_rebuilds_its_task(make_cfg, tmp_path):
    from lrlab.tasks.causal_lm import CausalLMTask
    from lrlab.train import run

    run(make_cfg("debug=smoke", "data.max_tokens=40000"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    task = CausalLMTask.load_from_checkpoint(path).eval()
    weights = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(task.state_dict()[k], v) for k, v in weights.items())
    ids = torch.randint(0, 256, (2, 16))
    assert task.model(input_ids=ids).logits.shape == (2, 16, task.model.config.vocab_size)


def test_a_task_takes_its_parts_positionally():
    """Each task passes its positional arguments on to `BaseTask` in that signature's order
    (model, loss, methods, optimizer, scheduler, total_steps)."""
    from lrlab.tasks.causal_lm import CausalLMTask
    from lrlab.tasks.classify import ClassifyTask

    model, optimizer, scheduler = torch.nn.Linear(2, 3), {"lr": 0.1}, {"kind": "constant"}
    for task in (CausalLMTask(model, None, [], optimizer, scheduler, 7),
                 ClassifyTask(model, None, [], optimizer, scheduler, 7, num_classes=3)):
        assert task.model is model and task.optimizer_cfg is optimizer and task.scheduler_cfg is scheduler
        assert task.total_steps == 7 and len(task.methods) == 0
