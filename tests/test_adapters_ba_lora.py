import io
import math

import pytest
import torch

from conftest import TARGETS
from lrlab.adapters import ba_lora
from lrlab.errors import ConfigError

HEAD = 32 * 3 + 3


def test_consistency_is_the_mse_of_row_normalised_logits():
    logits, frozen = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    # rows (0.6, 0.8) and (0.8, 0.6): squared differences 0.04, 0.04
    assert torch.isclose(ba_lora.consistency(logits, frozen), torch.tensor(0.04))


def test_diversity_is_the_off_diagonal_covariance():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    # centred rows (0,-1), (-1,0), (1,1): covariance [[1, .5], [.5, 1]]; off-diagonal squares .5, over c=2
    assert torch.isclose(ba_lora.diversity(logits), torch.tensor(0.25))


def test_svd_term_is_minus_the_top_k_share_of_singular_values():
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert torch.isclose(ba_lora.svd_term(logits, k=1), torch.tensor(-0.75))
    assert torch.isclose(ba_lora.svd_term(logits, k=3), torch.tensor(-1.0))


def test_generation_forms_kl_entropy_and_per_sequence_svd():
    logits = torch.zeros(2, 1, 4)  # uniform next-token distributions over 4 tokens
    frozen = torch.tensor([[[math.log(2.0), 0.0, 0.0, 0.0]]]).repeat(2, 1, 1)  # p0 = (.4, .2, .2, .2)
    p0 = torch.tensor([0.4, 0.2, 0.2, 0.2])
    kl = (p0 * (p0 / 0.25).log()).sum()  # per token; batchmean sums tokens and divides by 2 sequences
    assert torch.isclose(ba_lora.consistency(logits, frozen), kl)
    assert torch.isclose(ba_lora.diversity(logits), torch.tensor(-math.log(4.0)))
    sequences = torch.stack([torch.diag(torch.tensor([3.0, 1.0])), torch.diag(torch.tensor([1.0, 1.0]))])
    assert torch.isclose(ba_lora.svd_term(sequences, k=1), torch.tensor(-(0.75 + 0.5) / 2))


@pytest.fixture
def adapted(method, tiny, make_task):
    adapter = method("adapter", "ba_lora", target_modules=TARGETS, r=4)
    model = adapter.transform_model(tiny())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return adapter, model, make_task(model, [adapter])


def test_frozen_pass_is_the_original_model_not_the_pissa_residual(adapted, tiny):
    adapter, model, task = adapted
    batch = {"x": torch.randn(6, 16), "y": torch.randint(0, 3, (6,))}
    original = tiny()(batch["x"])["logits"]
    assert torch.allclose(ba_lora.pretrained_logits(task, batch, adapter.initial), original, atol=1e-5)
    with model.disable_adapter():
        residual = model(batch["x"])["logits"]
    assert not torch.allclose(residual, original, atol=1e-3)
    assert model.training  # the frozen pass restores train mode


def test_penalty_is_the_weighted_sum_and_trains_the_adapter(adapted, tiny):
    adapter, model, task = adapted
    batch = {"x": torch.randn(6, 16), "y": torch.randint(0, 3, (6,))}
    outputs = task.forward_batch(batch)
    logits, frozen = outputs["logits"], tiny()(batch["x"])["logits"].detach()
    expected = (1e-4 * ba_lora.consistency(logits, frozen) + 3e-4 * ba_lora.diversity(logits)
                + 1e-4 * ba_lora.svd_term(logits, 3))
    penalty = adapter.loss_term(task, outputs, batch)
    assert torch.allclose(penalty, expected, atol=1e-9)
    penalty.backward()
    assert model.base_model.model.body[1].lora_A["default"].weight.grad.abs().sum() > 0


def test_counts_merge_and_save_load(adapted, method, tiny):
    adapter, model, _ = adapted
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 * (16 + 32) + 4 * (32 + 32) + HEAD
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = method("adapter", "ba_lora", target_modules=TARGETS, r=4).transform_model(tiny())
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(5, 16)
    before = model(x)["logits"]
    assert torch.equal(fresh(x)["logits"], before)
    assert torch.allclose(adapter.export(model)(x)["logits"], before, atol=1e-5)


@pytest.mark.parametrize("settings, key", [({"lambda2": -1.0}, "adapter.lambda2"), ({"k": 0}, "adapter.k")])
def test_bad_input_is_a_config_error(method, settings, key):
    with pytest.raises(ConfigError, match=key):
        method("adapter", "ba_lora", **settings)
