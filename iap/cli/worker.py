"""The hidden `iap train-worker`: what every process of a launched (torchrun / accelerate) run executes."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from iap.cli.common import BASE, ZH_ENCODER, app, console
from iap.cli.options import with_stage_options
from iap.pipeline.request import StageConfigs


def _live_source(base_model, encoder, snapshot: str | None, n_train: int, seed: int):
    """(source, lineage) for live training (no cache): a snapshot's train split or synthetic shapes-world
    triples, in memory."""
    if snapshot:
        from iap.cache.live import snapshot_source
        from iap.data.snapshot import open_snapshot
        snap = open_snapshot(snapshot)
        return snapshot_source(base_model, encoder, snap, "train")[0], {"snapshot_id": snap.id}
    from iap import shapes
    from iap.cache.live import build_in_memory_source, image_size
    samples = [s for s in shapes.samples(2 * n_train, seed) if not shapes.is_held_out(s.combo)][:n_train]
    size = image_size(base_model)
    source = build_in_memory_source(base_model, encoder, [shapes.render(s, size) for s in samples],
                                    [s.caption_en for s in samples], [s.caption_zh for s in samples])
    return source, {"data": f"shapes:{n_train}"}


@app.command("train-worker", hidden=True)
@with_stage_options("train")
def train_worker(
    base: BASE,
    zh_encoder: ZH_ENCODER,
    out: Annotated[str, typer.Option(help="run directory, local or s3:// (checkpoints; resumes if present)")],
    cache: Annotated[str | None, typer.Option(help="train from this cache (iap precompute)")] = None,
    snapshot: Annotated[str | None, typer.Option(help="train live from this snapshot's train split")] = None,
    n_train: Annotated[int, typer.Option(help="without --cache/--snapshot: synthetic triples")] = 1200,
    lineage: Annotated[str | None, typer.Option(help="JSON merged into the checkpoints' lineage")] = None,
    *, configs: StageConfigs,
) -> None:
    """Train the Chinese encoder alone from a cache, a snapshot, or synthetic shapes-world triples: the
    command every process of a launched (torchrun / accelerate) run executes, and the tests' trainer."""
    import json as _json

    from iap.models import load_chinese_encoder
    from iap.presets.names import resolve
    from iap.system.launch import inside_launch, run_launched
    from iap.training.loop import train
    base, zh_encoder = resolve(base, zh_encoder)
    cfg = configs.train
    from iap.models.compat import check_pair
    check_pair(base, zh_encoder)  # from configs alone: a mismatched pair fails before anything is loaded
    if cfg.distributed and not inside_launch():
        run_launched(sys.argv[1:], cfg.num_processes, cfg.accelerate_config, log=console.print)
        return
    from iap.models import load_base
    from iap.models.base import weights_fingerprint
    from iap.system.runtime import detect
    runtime = detect(cfg.mixed_precision)
    found = {"base": base, "base_fingerprint": weights_fingerprint(base)}
    if cache:
        from iap.cache.info import open_cache
        from iap.training.assembly import from_cache
        info = open_cache(cache, base_fingerprint=found["base_fingerprint"])
        found |= {"cache_key": info.key, "cache_url": info.url, "snapshot_id": info.snapshot_id}
        run = from_cache(info, cfg, base, zh_encoder, runtime, lambda: load_base(base, runtime))
    else:
        from iap.training.assembly import live
        base_model = load_base(base, runtime)
        encoder = load_chinese_encoder(zh_encoder, base_model.cross_attention_dim, max_length=base_model.max_length,
                                       base=base_model.source)
        source, data = _live_source(base_model, encoder, snapshot, n_train, cfg.seed)
        found |= data
        run = live(base_model, encoder, cfg, source)
    result = train(cfg, run.encoder, run.objective, run.source, out, log=console.print,
                   lineage=found | (_json.loads(lineage) if lineage else {}), empty=run.empty)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"checkpoint: {result.checkpoint}  ({result.samples_per_second:.1f} samples/s)")


