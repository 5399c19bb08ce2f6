import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from iap.objective import Teacher, make_objective
from tests.helpers import PRESETS, assert_pivot_equals_live, preset_models


@pytest.mark.parametrize("preset", PRESETS)
def test_capture_processor_reproduces_stock_unet(preset, request):
    base, _, small_source = preset_models(request, preset)
    batch = small_source.batch(torch.arange(4), torch.Generator().manual_seed(0))
    teacher = Teacher(base)
    x = teacher.noisy_latents(batch)
    added = teacher.added_cond(batch)  # SDXL's pooled embedding and time ids; None otherwise
    with torch.no_grad():
        captured = base.unet(x, batch.timesteps, batch.en_states, added_cond_kwargs=added).sample
        base.unet.set_attn_processor(AttnProcessor2_0())
        stock = base.unet(x, batch.timesteps, batch.en_states, added_cond_kwargs=added).sample
    assert torch.equal(captured, stock)


@pytest.mark.parametrize("preset", PRESETS)
def test_pivot_from_given_queries_equals_live_unet_pass(preset, request):
    """pivot (standalone attention over given queries) == a real UNet pass with the Chinese states in
    which every cross-attention layer is fed the English-pass queries: loss and gradients (on SD-2 shapes,
    through the Chinese encoder's learned projection; on SDXL shapes, through both Chinese towers)."""
    base, encoder, small_source = preset_models(request, preset)
    batch = small_source.batch(torch.arange(8), torch.Generator().manual_seed(1))
    assert_pivot_equals_live(Teacher(base), encoder, batch)


def test_gradients_reach_only_the_chinese_encoder(base, encoder, small_source):
    batch = small_source.batch(torch.arange(4), torch.Generator().manual_seed(2))
    teacher = Teacher(base)
    for name in ("pivot", "separate", "eps-distill", "embedding-mse"):
        encoder.zero_grad()
        loss = make_objective(name, teacher)(encoder(batch.zh_ids), batch)
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters()), name
        for frozen in (base.unet, base.vae, base.text_encoder):
            assert all(p.grad is None and not p.requires_grad for p in frozen.parameters()), name
            assert not frozen.training


def test_loss_is_zero_when_chinese_states_equal_english(base, small_source):
    batch = small_source.batch(torch.arange(8), torch.Generator().manual_seed(3))
    teacher = Teacher(base)
    for name in ("pivot", "separate", "eps-distill", "embedding-mse"):
        assert make_objective(name, teacher)(batch.en_states, batch).item() < 1e-10, name
    mismatched = make_objective("pivot", teacher)(batch.en_states.roll(1, 0), batch).item()
    assert mismatched > 1e-4


def test_layer_weights_select_layers(base, encoder, small_source):
    """Weights are prefix-matched: weight 1 on one layer and 0 elsewhere gives that layer's MSE."""
    from iap.attention import attend

    batch = small_source.batch(torch.arange(4), torch.Generator().manual_seed(4))
    teacher = Teacher(base)
    queries, targets, _ = teacher.english_pass(batch)
    states = encoder(batch.zh_ids).detach()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    only_one = make_objective("pivot", teacher, {"down_blocks.0": 1.0, "": 0.0})
    direct = torch.nn.functional.mse_loss(attend(teacher.layers[name], queries[name], states), targets[name])
    assert only_one(states, batch).item() == pytest.approx(direct.item(), rel=1e-6)


def test_empty_prompt_rows_get_empty_captions_and_recomputed_cached_targets(base, encoder):
    """The CFG pairing zh "" -> en "": masked rows change on both sides; cached targets are recomputed
    from the cached queries; other rows are untouched."""
    from iap.attention import attend
    from iap.objective import EmptyPrompt, FrozenBatch, Teacher
    teacher = Teacher(base)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 16, 16, generator=g)
    batch = FrozenBatch(zh_ids=encoder.tokenize(["红色", "蓝色", "绿色", "黄色"]),
                        en_states=base.encode_english(["red", "blue", "green", "yellow"]), latents=latents,
                        noise=torch.randn(latents.shape, generator=g), timesteps=torch.tensor([100, 300, 500, 700]))
    batch.queries, batch.targets, _ = teacher.english_pass(batch)
    en_empty = base.encode_english([""])
    empty = EmptyPrompt.pair(en_empty, encoder, teacher.layers)
    mask = torch.tensor([False, True, False, True])
    out = empty.apply(batch, mask.nonzero().flatten().tolist())
    assert (out.zh_ids[mask] == encoder.tokenize([""])).all() and (out.zh_ids[~mask] == batch.zh_ids[~mask]).all()
    assert torch.equal(out.en_states[1], en_empty[0]) and torch.equal(out.en_states[0], batch.en_states[0])
    for name, target in out.targets.items():
        assert torch.equal(target[~mask], batch.targets[name][~mask])
        expected = attend(teacher.layers[name], batch.queries[name][mask], en_empty.expand(2, -1, -1))
        assert torch.allclose(target[mask], expected, atol=1e-6)
        assert not torch.allclose(target[mask], batch.targets[name][mask])
