import torch
from torch import nn

from lrlab.adapters.allora import ALLoRA
from lrlab.adapters.peft_glue import LoRA
from lrlab.callbacks.intruders import IntruderDimensions, effective_weight, intruder_directions
from lrlab.models.classifier import mlp


def test_effective_weight_reads_lora_and_plain_layers():
    torch.manual_seed(0)
    plain = nn.Linear(6, 4)
    assert torch.allclose(effective_weight(plain, 6), plain.weight)
    model = ALLoRA(["body.1"], r=2).transform_model(mlp(6, 2, hidden=(4,)))
    layer = model.body[1]
    with torch.no_grad():
        layer.lora_B.normal_()
    assert torch.allclose(effective_weight(layer, 6), layer.base.weight + layer.lora_B @ layer.lora_A, atol=1e-6)


def test_a_new_orthogonal_direction_is_an_intruder():
    eye = torch.eye(4)
    pretrained = torch.diag(torch.tensor([4.0, 3.0, 0.0, 0.0]))
    u0 = torch.linalg.svd(pretrained)[0][:, :2]  # compare against the first two directions only
    tuned = pretrained + 10.0 * torch.outer(eye[2], eye[3])
    found, _ = intruder_directions(u0, tuned, top_k=3, threshold=0.5)
    assert found.tolist() == [0]  # the new top direction e2 is orthogonal to e0 and e1
    none_found, _ = intruder_directions(u0, pretrained * 2, top_k=2, threshold=0.5)
    assert none_found.numel() == 0


class _Task(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


def test_callback_counts_and_mitigation_removes_intruders():
    torch.manual_seed(0)
    task = _Task(LoRA(["body.1"], r=1, alpha=1).transform_model(mlp(64, 2, hidden=(64,))))
    callback = IntruderDimensions(top_k=3, threshold=0.5, mitigate_lambda=0.0)
    callback.on_fit_start(None, task)
    assert callback.measure() == {"base_model.model.body.1": 0}
    layer = task.model.base_model.model.body[1]
    with torch.no_grad():  # a rank-1 update far larger than W_0, along a random direction
        layer.lora_B["default"].weight.copy_(torch.randn(64, 1) * 20)
    before = callback.measure()["base_model.model.body.1"]
    assert before >= 1
    callback.on_train_end(None, task)
    assert callback.counts["base_model.model.body.1"] < before


def test_intruder_counts_reach_the_summary(make_cfg):
    from lrlab.train import run

    summary = run(make_cfg("experiment=baseline/digits_mlp_adamw", "debug=smoke", "adapter=lora",
                           "callbacks=intruders"))
    found = {key: value for group in summary["metrics"].values() if isinstance(group, dict)
             for key, value in group.items() if key.startswith("intruders/")}
    assert set(found) == {"intruders/base_model.model.body.1", "intruders/base_model.model.body.3", "intruders/total"}
    assert found["intruders/total"] == found["intruders/base_model.model.body.1"] + found["intruders/base_model.model.body.3"]


def test_pretrained_directions_survive_a_checkpoint():
    """A resumed run compares against the pretrained singular vectors saved in the checkpoint, not
    against those of the weights it resumes from."""
    torch.manual_seed(0)
    task = _Task(LoRA(["body.1"], r=1, alpha=1).transform_model(mlp(64, 2, hidden=(64,))))
    saved = IntruderDimensions(top_k=3, threshold=0.5)
    saved.on_fit_start(None, task)
    with torch.no_grad():
        task.model.base_model.model.body[1].lora_B["default"].weight.copy_(torch.randn(64, 1) * 20)
    resumed = IntruderDimensions(top_k=3, threshold=0.5)
    resumed.load_state_dict(saved.state_dict())
    resumed.on_fit_start(None, task)
    assert resumed.measure() == saved.measure() and saved.measure()["base_model.model.body.1"] >= 1
