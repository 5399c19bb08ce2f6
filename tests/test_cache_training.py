"""Training from each cache policy reaches the same held-out quality as training live."""

from __future__ import annotations

import pytest
import torch

from iap.cache.info import CacheConfig
from iap.cache.live import snapshot_source
from iap.cache.reader import CacheSource, load_cached_layers
from iap.cache.writer import precompute
from iap.config import TrainConfig
from iap.data.pipeline import run_data
from iap.data.snapshot import FilterConfig
from iap.evaluation.heldout import AttentionFeatures, heldout_loss, retrieval
from iap.models import load_chinese_encoder
from iap.objective import EmptyPrompt, Teacher, make_objective
from iap.shapes.synth import serve, write_synth
from iap.training.loop import train
from tests.helpers import DOWNLOAD, free_port

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop

TRAIN = TrainConfig(steps=250, batch_size=16, lr=2e-3, warmup_steps=20, checkpoint_every=1000, log_every=1000)


@pytest.fixture(scope="module")
def grouped_snapshot(tmp_path_factory):
    """360 triples, split by combination: val combos never appear in train."""
    folder = tmp_path_factory.mktemp("synth360")
    port = free_port()
    manifest = write_synth(folder, n=360, seed=7, base_url=f"http://127.0.0.1:{port}")
    # no broken rows here: a generous whole-request timeout keeps every row on a loaded machine
    one_shard = DOWNLOAD.model_copy(update={"number_sample_per_shard": 400, "thread_count": 32, "timeout": 10})
    server = serve(folder, port)
    try:
        _, snapshot = run_data(str(manifest), str(tmp_path_factory.mktemp("data360")), one_shard,
                               FilterConfig(split_key="combo", val_fraction=0.2, test_fraction=0.0, shard_rows=100))
    finally:
        server.shutdown()
    return snapshot


def _evaluate(base, encoder, held, teacher) -> dict:
    objective = make_objective("pivot", teacher)
    features = AttentionFeatures(base, teacher, held.latents[:4])
    encoder.eval()
    with torch.no_grad():
        zh = encoder(held.zh_ids)
    return {"loss": heldout_loss(objective, encoder, held, base.device),
            "top1": retrieval(features, zh, held.en_states, torch.arange(len(held)))["top1"]}


def test_each_policy_trains_as_well_as_live(grouped_snapshot, tiny_dir, base, tmp_path):
    teacher = Teacher(base)
    fresh = lambda: load_chinese_encoder(tiny_dir / "zh_encoder", base.cross_attention_dim)  # noqa: E731
    held, _ = snapshot_source(base, fresh(), grouped_snapshot, "val")
    results = {}
    encoder = fresh()
    live, _ = snapshot_source(base, encoder, grouped_snapshot, "train")
    en_empty = base.encode_english([""])
    train(TRAIN, encoder, make_objective("pivot", teacher), live, tmp_path / "live", log=lambda _: None,
          empty=EmptyPrompt.pair(en_empty, encoder))
    results["live"] = _evaluate(base, encoder, held, teacher)
    for policy in ("recompute", "store", "store-sampled"):
        cfg = CacheConfig(policy=policy, draws=4, positions=32, splits=["train"])
        info = precompute(grouped_snapshot, lambda: base, base.fingerprint, str(tmp_path / "cache"), cfg,
                          log=lambda _: None)
        encoder = fresh()
        layers = None if policy == "recompute" else load_cached_layers(info)
        objective = make_objective("pivot", teacher if policy == "recompute" else None, layers=layers)
        train(TRAIN, encoder, objective, CacheSource(info, "train", encoder.tokenize), tmp_path / policy,
              log=lambda _: None, empty=EmptyPrompt.pair(en_empty, encoder, layers))
        results[policy] = _evaluate(base, encoder, held, teacher)
    print(results)
    untrained = _evaluate(base, fresh(), held, teacher)
    for name, r in results.items():
        assert r["loss"] < untrained["loss"] / 20, name
        assert r["loss"] == pytest.approx(results["live"]["loss"], rel=0.5), name
        assert abs(r["top1"] - results["live"]["top1"]) <= 0.15, name
