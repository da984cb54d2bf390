"""Launching at scale: torchrun, the global batch, SLURM (simulated on CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch

DIGITS_SMOKE = ["experiment=baseline/digits_mlp_adamw", "debug=smoke", "logger=none"]


def env(**extra):
    return {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_torchrun_runs_the_hydra_entry_on_two_cpu_processes(tmp_path):
    """`torchrun --nproc_per_node=2 -m lrlab.train trainer=ddp ...`: one run dir, one
    report, and the global batch is data.batch_size × 2."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "lrlab.train", *DIGITS_SMOKE, "trainer=ddp", "trainer.accelerator=cpu",
                           "data.batch_size=8", "run_name=tr"], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "runs" / "tr" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert done.stdout.count("status") == 1
    assert "global batch: 16 = data.batch_size 8 × 2 processes × 1 accumulated" in done.stdout
    assert sorted(p.name for p in (tmp_path / "outputs" / "runs").iterdir()) == ["tr"]


def test_torchrun_without_run_name_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lrlab.train", *DIGITS_SMOKE], cwd=tmp_path,
                          env=env(TORCHELASTIC_RUN_ID="x"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: run_name=")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()


def test_single_process_prints_its_global_batch(make_cfg, capsys):
    from lrlab.train import run

    run(make_cfg(*DIGITS_SMOKE, "data.batch_size=4", "trainer.accumulate_grad_batches=3"))
    assert "global batch: 12 = data.batch_size 4 × 1 process × 3 accumulated" in capsys.readouterr().out


@pytest.mark.slow
def test_two_nodes_of_one_process_each_write_one_run(tmp_path):
    """`trainer.num_nodes=2`: two torchrun launches (node ranks 0 and 1) form one run; only
    global rank 0 owns the run dir (node 1's first process has LOCAL_RANK 0 too)."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m",
                               "lrlab.train", *DIGITS_SMOKE, "trainer=ddp", "trainer.accelerator=cpu",
                               "trainer.devices=1", "trainer.num_nodes=2", "data.batch_size=8", "run_name=nodes"],
                              cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "global batch: 16 = data.batch_size 8 × 2 processes" in outputs[0][0]
    summary = json.loads((tmp_path / "outputs" / "runs" / "nodes" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6


def test_every_method_is_verified_under_fsdp2_or_refused():
    """No method runs silently wrong under FSDP2: each one for language models is either among
    those whose 2-process FSDP2 run equals one process (tests/test_data_parallel.py) or declares
    `shardable = False`, which `trainer=fsdp2` refuses."""
    from ddp_cases import FSDP2_METHODS, conf_root
    from lrlab.parts import build_loss, build_methods, check_strategy
    from lrlab.errors import ConfigError
    from lrlab.train import compose

    unverified = []
    for group in ("adapter", "parametrization", "regularizer", "loss"):
        for path in sorted((conf_root() / group).glob("*.yaml")):
            if path.stem in ("none", "cross_entropy"):
                continue
            cfg = compose([f"{group}={path.stem}"], run_dir="unused")
            built = build_loss(cfg) if group == "loss" else build_methods(cfg)[0]
            if "causal_lm" not in built.tasks:
                continue
            if not built.shardable:
                with pytest.raises(ConfigError, match="trainer=fsdp2"):
                    check_strategy([built], "fsdp2")
                check_strategy([built], "ddp")
            elif path.stem not in FSDP2_METHODS.get(group, []):
                unverified.append(f"{group}={path.stem}")
    assert unverified == []


def test_fsdp2_refuses_a_method_it_cannot_shard_in_one_line(cli, tmp_path):
    code, _, err = cli("train", "model=llama_tiny", "adapter=lift", "trainer=fsdp2", "trainer.accelerator=cpu",
                       "logger=none", "run_name=refused")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "trainer=fsdp2" in err and "adapter" in err
    assert not (tmp_path / "outputs" / "runs" / "refused").exists()


def test_slurm_launcher_preset_composes_with_the_trainer():
    from hydra import compose, initialize_config_dir

    from lrlab import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "trainer=fsdp2", "trainer.num_nodes=2", "trainer.devices=4",
                                 "hydra.launcher.partition=gpu", "hydra.launcher.account=proj",
                                 "hydra.launcher.timeout_min=60"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu", "proj", 60)
    assert launcher.max_num_timeout == 0 and launcher.signal_delay_s > 0


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "lrlab",
         "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


@pytest.mark.slow
def test_slurm_signal_checkpoints_requeues_and_resume_continues(tmp_path):
    """SLURM's SIGUSR1 before the time limit: the step finishes, last.ckpt is saved, the job is
    requeued (a stand-in `scontrol` records the call), and the requeued command (the same one,
    with resume=auto) continues to max_steps."""
    import signal
    import time

    steps = 600  # the signal comes at the first CSV flush, hundreds of steps before the end
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    slurm = env(**SLURM, PATH=f"{bin_dir}:{os.environ['PATH']}")
    args = [sys.executable, "-m", "lrlab.cli", "train", "experiment=baseline/digits_mlp_adamw", "logger=csv",
            "run_name=slurm", "resume=auto", f"trainer.max_steps={steps}", "trainer.val_check_interval=50"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "outputs" / "runs" / "slurm"
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "csv" / "metrics.csv").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", err[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    stopped_at = summary["steps"]
    assert 0 < stopped_at < steps
    done = subprocess.run(args, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == steps
