"""The cache of the frozen English side: exactness, content addressing, resume, refusal."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from iap.cache.info import CacheConfig, cache_key, open_cache
from iap.cache.live import image_size, to_pixels
from iap.cache.reader import CacheSource, load_cached_layers
from iap.cache.writer import _teacher_targets, precompute
from iap.data.reader import decode, read_shard
from iap.errors import IapError
from iap.models.base import noise_from_seeds
from iap.objective import FrozenBatch, Teacher, make_objective
from tests.helpers import PRESETS, kill_at_marker, preset_models

POLICIES = ["recompute", "store", "store-sampled"]


def _live_loss(base, encoder, snapshot, batch, keys) -> float:
    """The pivot loss computed from the snapshot's original images and captions (no cache)."""
    rows = {r["key"]: r for rel in snapshot.shards["train"] for r in read_shard(f"{snapshot.url}/{rel}")}
    picked = [rows[k] for k in keys]
    latents = base.encode_images(to_pixels([decode(r["image"]) for r in picked], image_size(base)))
    states, pooled = base.english([r["caption_en"] for r in picked])
    live = FrozenBatch(zh_ids=batch.zh_ids, en_states=states, latents=latents, timesteps=batch.timesteps,
                       noise=noise_from_seeds(batch.noise_seeds_used, latents.shape[1:]),
                       added_cond=base.added_cond(pooled, latents))
    with torch.no_grad():
        return make_objective("pivot", Teacher(base))(encoder(live.zh_ids), live).item()


@pytest.mark.parametrize("policy", ["recompute", "store"])
@pytest.mark.parametrize("preset", PRESETS)
def test_cached_loss_equals_live_loss(policy, preset, local_run, request, tmp_path):
    base, encoder, _ = preset_models(request, preset)
    _, _, snapshot = local_run
    info = precompute(snapshot, lambda: base, base.fingerprint, str(tmp_path),
                      CacheConfig(policy=policy, dtype="float32"), log=lambda _: None)
    source = CacheSource(info, "train", encoder.tokenize)
    idx = torch.arange(8)
    batch = source.batch(idx, torch.Generator().manual_seed(0))
    keys, seeds = source.keys_and_seeds(idx, torch.Generator().manual_seed(0))
    batch.noise_seeds_used = seeds
    layers = load_cached_layers(info) if policy != "recompute" else None
    objective = make_objective("pivot", Teacher(base) if policy == "recompute" else None, layers=layers)
    with torch.no_grad():
        cached = objective(encoder(batch.zh_ids), batch).item()
    assert cached == pytest.approx(_live_loss(base, encoder, snapshot, batch, keys), rel=1e-5)


def test_store_sampled_is_an_unbiased_estimate(base, encoder, small_source):
    """Mean over many position draws of the sampled loss converges to the full loss."""
    batch = small_source.batch(torch.arange(4), torch.Generator().manual_seed(5))
    teacher = Teacher(base)
    keys = [f"k{i}" for i in range(4)]
    steps, seeds = batch.timesteps[:, None], torch.tensor([[11], [12], [13], [14]])
    full = _teacher_targets(teacher, batch.latents, batch.en_states, None, steps, seeds, keys,
                            CacheConfig(policy="store", draws=1))
    layers = teacher.layers
    pivot = make_objective("pivot", None, layers=layers)
    states = encoder(batch.zh_ids).detach()

    def loss(targets):
        b = FrozenBatch(zh_ids=batch.zh_ids, en_states=batch.en_states,
                        queries={n[2:]: v[:, 0] for n, v in targets.items() if n.startswith("q.")},
                        targets={n[2:]: v[:, 0] for n, v in targets.items() if n.startswith("o.")})
        return pivot(states, b).item()

    exact = loss(full)
    estimates = [loss(_teacher_targets(teacher, batch.latents, batch.en_states, None, steps, seeds, keys,
                                       CacheConfig(policy="store-sampled", positions=8, draws=1, seed=s)))
                 for s in range(60)]
    mean = sum(estimates) / len(estimates)
    assert len(set(estimates)) > 50  # the positions really vary
    assert mean == pytest.approx(exact, rel=0.05)


def test_cache_key_changes_exactly_with_its_inputs():
    cfg = CacheConfig()
    key = cache_key("snap", "base", cfg)
    assert key == cache_key("snap", "base", CacheConfig())
    assert key == cache_key("snap", "base", cfg.model_copy(update={"batch_size": 64}))  # how, not what
    for other in (cache_key("snap2", "base", cfg), cache_key("snap", "base2", cfg),
                  cache_key("snap", "base", cfg.model_copy(update={"draws": 3})),
                  cache_key("snap", "base", cfg.model_copy(update={"policy": "store"}))):
        assert other != key


def test_second_precompute_does_no_model_work(local_run, base, tmp_path):
    _, _, snapshot = local_run
    calls = {"load": 0, "unet": 0, "vae": 0}
    base.unet.register_forward_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))
    base.vae.encoder.register_forward_hook(lambda *a: calls.__setitem__("vae", calls["vae"] + 1))

    def load():
        calls["load"] += 1
        return base

    cfg = CacheConfig(policy="store-sampled", positions=8)
    first = precompute(snapshot, load, base.fingerprint, str(tmp_path), cfg, log=lambda _: None)
    assert calls["load"] == 1 and calls["unet"] > 0 and calls["vae"] > 0
    calls.update(load=0, unet=0, vae=0)
    second = precompute(snapshot, load, base.fingerprint, str(tmp_path), cfg, log=lambda _: None)
    assert second.cached and second.key == first.key
    assert calls == {"load": 0, "unet": 0, "vae": 0}


def test_a_cache_for_another_snapshot_or_base_is_refused(local_run, base, tmp_path):
    _, _, snapshot = local_run
    info = precompute(snapshot, lambda: base, base.fingerprint, str(tmp_path), CacheConfig(), log=lambda _: None)
    assert open_cache(info.url, snapshot.id, base.fingerprint).key == info.key
    with pytest.raises(IapError, match="built for snapshot"):
        open_cache(info.url, snapshot_id="0123456789abcdef")
    with pytest.raises(IapError, match="built for base model"):
        open_cache(info.url, base_fingerprint="0123456789abcdef")
    with pytest.raises(IapError, match="incomplete"):
        open_cache(str(tmp_path / "cache-nothing"))


KILL_SCRIPT = """
import sys, time
import iap.cache.writer as cache
from iap.data.snapshot import open_snapshot
from iap.models import load_base
original = cache._index
def slow(*a, **k):
    out = original(*a, **k)
    print("SHARD", flush=True)
    time.sleep(60)
    return out
cache._index = slow
if __name__ == "__main__":
    base = load_base(sys.argv[2])
    cache.precompute(open_snapshot(sys.argv[1]), lambda: base, base.fingerprint, sys.argv[3],
                     cache.CacheConfig(policy="store-sampled", positions=8), log=lambda _: None)
"""


@pytest.mark.e2e
def test_kill_9_during_precompute_then_resume_equals_uninterrupted(local_run, base, tiny_dir, tmp_path):
    _, _, snapshot = local_run
    cfg = CacheConfig(policy="store-sampled", positions=8)
    straight = precompute(snapshot, lambda: base, base.fingerprint, str(tmp_path / "a"), cfg, log=lambda _: None)
    # killed once the first shard's tensors are written, before its index commits it
    kill_at_marker([sys.executable, "-c", KILL_SCRIPT, snapshot.url, str(tiny_dir / "base"), str(tmp_path / "b")],
                   "SHARD")
    killed_dir = tmp_path / "b" / f"cache-{straight.key}"
    assert not (killed_dir / "cache.json").exists() and not list(killed_dir.glob("shards/*.parquet"))
    resumed = precompute(snapshot, lambda: base, base.fingerprint, str(tmp_path / "b"), cfg, log=lambda _: None)
    assert resumed.shards == straight.shards
    for split in resumed.shards.values():
        for shard in split:
            a = load_file(f"{straight.url}/shards/{shard['name']}.safetensors")
            b = load_file(f"{resumed.url}/shards/{shard['name']}.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_on_s3_streams_like_local(s3, local_run, base, encoder, tmp_path):
    _, _, snapshot = local_run
    cfg = CacheConfig(policy="store")
    local = precompute(snapshot, lambda: base, base.fingerprint, str(tmp_path), cfg, log=lambda _: None)
    remote = precompute(snapshot, lambda: base, base.fingerprint, "s3://iap-test/caches", cfg, log=lambda _: None)
    assert remote.key == local.key and s3.exists(f"{remote.url}/cache.json")
    g = torch.Generator().manual_seed(3)
    a = CacheSource(open_cache(local.url), "train", encoder.tokenize)
    b = CacheSource(open_cache(remote.url), "train", encoder.tokenize)
    order = a.epoch_order(torch.Generator().manual_seed(1))
    assert torch.equal(order, b.epoch_order(torch.Generator().manual_seed(1)))
    ba, bb = a.batch(order[:6], g), b.batch(order[:6], torch.Generator().manual_seed(3))
    assert all(torch.equal(ba.targets[n], bb.targets[n]) for n in ba.targets)


@pytest.mark.parametrize("policy", ["recompute", "store-sampled"])
def test_a_precompute_over_budget_writes_nothing_and_says_why(policy, local_run, base, tmp_path):
    from iap.errors import IapError
    _, _, snapshot = local_run
    cfg = CacheConfig(policy=policy, draws=4, max_gb=1e-6)
    with pytest.raises(IapError, match=r"over budget.*GB.*recompute.*Nothing was written"):
        precompute(snapshot, lambda: base, base.fingerprint, str(tmp_path / "cache"), cfg, log=lambda _: None)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))
    within = precompute(snapshot, lambda: base, base.fingerprint, str(tmp_path / "cache"),
                        cfg.model_copy(update={"max_gb": 1.0}), log=lambda _: None)
    assert within.bytes > 0 and within.key == cache_key(snapshot.id, base.fingerprint, cfg)  # a launch option
