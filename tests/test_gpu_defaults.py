"""Defaults that differ between GPUs and CPUs: the multi-device trainers' precision."""

import pytest
import torch

from lrlab.train import compose


@pytest.mark.parametrize("trainer", ["ddp", "fsdp2"])
def test_multi_device_trainers_run_bf16_mixed_on_gpus_and_fp32_on_cpus(trainer):
    assert compose([f"trainer={trainer}", "trainer.accelerator=gpu"]).trainer.precision == "bf16-mixed"
    assert compose([f"trainer={trainer}", "trainer.accelerator=cuda"]).trainer.precision == "bf16-mixed"
    assert compose([f"trainer={trainer}", "trainer.accelerator=cpu"]).trainer.precision == "32-true"
    on_this_machine = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    assert compose([f"trainer={trainer}"]).trainer.precision == on_this_machine  # accelerator: auto


def test_an_explicit_precision_still_wins():
    assert compose(["trainer=ddp", "trainer.accelerator=gpu", "trainer.precision=32-true"]).trainer.precision == "32-true"
