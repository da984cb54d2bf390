import io

import pytest
import torch

from conftest import TARGETS
from lrlab.adapters import eva
from lrlab.errors import ConfigError

HEAD = 32 * 3 + 3


SPREAD = torch.linspace(4.0, 0.2, 16)  # well-separated singular values
CONCENTRATED = torch.tensor([5.0, 3.0] + [0.05] * 14)  # nearly rank 2: body.1 needs few components


def batches(scale: torch.Tensor, repeat: int = 3):
    """The same batch several times: the incremental SVD then equals the SVD of that batch."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, generator=generator) * scale + 1.0
    return [{"x": x, "y": torch.zeros(64, dtype=torch.long)}] * repeat


@pytest.fixture
def initialised(method, tiny, make_task):
    """initialised(rho, scale) -> the tiny MLP with EVA-initialised LoRA (r=4) from `batches(scale)`."""
    def make(rho: float, scale: torch.Tensor = CONCENTRATED):
        adapter = method("adapter", "eva", target_modules=TARGETS, r=4, rho=rho)
        model = adapter.transform_model(tiny())
        adapter.init_from_data(make_task(model, [adapter]), batches(scale))
        return model

    return make


def lora_a(model, layer: int) -> torch.Tensor:
    return model.base_model.model.body[layer].lora_A["default"].weight.detach()


def right_singular_vectors(inputs: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svd(inputs - inputs.mean(0), full_matrices=False)[2]


def test_a_rows_are_the_top_right_singular_vectors_of_the_layer_inputs(initialised, tiny):
    model = initialised(rho=1.0, scale=SPREAD)
    x = batches(SPREAD)[0]["x"]
    with torch.no_grad():
        hidden = tiny().body[:3](x)  # the input of body.3 under the pre-trained weights
    for layer, inputs in ((1, x), (3, hidden)):
        a, v = lora_a(model, layer), right_singular_vectors(inputs)[:4]
        assert a.shape == (4, inputs.shape[1])
        assert torch.allclose((a * v).sum(1).abs(), torch.ones(4), atol=1e-3)  # equal up to sign
    b = model.base_model.model.body[1].lora_B["default"].weight
    assert torch.count_nonzero(b) == 0


def explained_variance_ratios(inputs: torch.Tensor) -> torch.Tensor:
    s = torch.linalg.svdvals(inputs - inputs.mean(0))
    return s**2 / (s**2).sum()


def test_redistribution_gives_the_budget_to_the_largest_explained_variance(initialised, tiny):
    model = initialised(rho=2.0)
    x = batches(CONCENTRATED)[0]["x"]
    with torch.no_grad():
        hidden = tiny().body[:3](x)
    ratios = [explained_variance_ratios(inputs)[:8] for inputs in (x, hidden)]  # at most rho * r = 8 each
    top = torch.cat(ratios).argsort(descending=True)[:8]  # the budget: r * layers = 8
    expected = {1: int((top < 8).sum()), 3: int((top >= 8).sum())}
    ranks = {layer: lora_a(model, layer).shape[0] for layer in (1, 3)}
    assert ranks == expected and ranks != {1: 4, 3: 4}
    count = ranks[1] * (16 + 32) + ranks[3] * (32 + 32) + HEAD
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert torch.allclose(model(x)["logits"], tiny()(x)["logits"], atol=1e-6)  # B = 0: the pre-trained function


def perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_save_load_after_a_repeated_init(initialised):
    model = perturbed(initialised(rho=2.0))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = initialised(rho=2.0)  # the same batches give the same ranks, as on a resume
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(5, 16)
    assert torch.equal(fresh(x)["logits"], model(x)["logits"])


def test_merge_equivalence(initialised):
    model = perturbed(initialised(rho=2.0))
    x = torch.randn(5, 16)
    before = model(x)["logits"]
    assert torch.allclose(model.merge_and_unload()(x)["logits"], before, atol=1e-5)


def test_token_inputs_drop_padding_positions():
    batch = {"x": {"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}}
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    rows = eva.layer_rows((hidden,), eva.token_mask(batch, None), "layer")
    assert torch.equal(rows, torch.stack([hidden[0, 0], hidden[0, 1], hidden[1, 0]]))


@pytest.mark.parametrize("settings, key", [({"rho": 0.5}, "adapter.rho"), ({"tau": 0.0}, "adapter.tau")])
def test_bad_input_is_a_config_error(method, settings, key):
    with pytest.raises(ConfigError, match=key):
        method("adapter", "eva", **settings)


def test_too_small_batches_end_in_one_line_instead_of_cycling_forever(method, tiny, make_task):
    adapter = method("adapter", "eva", target_modules=TARGETS, r=4, max_init_batches=6)
    model = adapter.transform_model(tiny())
    small = [{"x": torch.randn(4, 16), "y": torch.zeros(4, dtype=torch.long)}] * 2  # 4 rows < rho * r = 8
    with pytest.raises(ConfigError, match="adapter.max_init_batches=6: EVA's components did not converge"):
        adapter.init_from_data(make_task(model, [adapter]), small)


def test_rho_one_keeps_every_layer_at_rank_r(initialised):
    model = initialised(rho=1.0)  # the inputs that make rho = 2 move the budget between layers
    assert {layer: lora_a(model, layer).shape[0] for layer in (1, 3)} == {1: 4, 3: 4}
