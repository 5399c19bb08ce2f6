"""The stage commands (data, precompute, train, evaluate, demo): options from the stage configs
(iap.cli.options: `--SECTION-FIELD`, or a `--config` JSON file), run on an engine (iap.pipeline.engines):
`prefect` by default, the Prefect flows a deployment runs; `local`, the library in this process. Both give
the same ids and bytes."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer
from rich.console import Console

from iap.cli.common import BASE, ENGINE, TRAIN_STEPS, ZH_ENCODER, app, console
from iap.cli.options import with_stage_options
from iap.cli.render import finish, print_data_plan, print_funnel, print_rejects, stage_progress
from iap.config import SD15, ZH_768
from iap.errors import IapError
from iap.pipeline.request import StageConfigs

# ---------------------------------------------------------------- stage commands (engine: prefect or local)


@app.command()
@with_stage_options("download", "filter", "columns", "english")
def data(manifest: Annotated[str, typer.Option(help="Parquet/CSV/TSV/JSONL path, glob or s3:// URL")],
         out: Annotated[str, typer.Option(help="output root, local or s3://")],
         engine: ENGINE = "prefect",
         explain: Annotated[int, typer.Option(min=0, help="then list up to N removed rows of every filter rule "
                                                          "(the snapshot's rejects.parquet holds them all)")] = 0,
         dry_run: Annotated[bool, typer.Option("--dry-run", help="read and account the whole manifest and say what "
                                               "would be downloaded; download, translate and write nothing")] = False,
         *, configs: StageConfigs) -> None:
    """Download a manifest with img2dataset and filter it with DuckDB into a dataset snapshot (iap-data)."""
    from iap.data.manifest import check_manifest
    from iap.pipeline import engines
    from iap.system.storage import check_reachable
    check_reachable(out)  # bad storage or a bad manifest: one message, before any work
    if dry_run:
        from iap.data.pipeline import plan_data
        print_data_plan(*plan_data(manifest, out, configs.download, configs.columns, configs.english))
        return
    check_manifest(manifest, configs.columns, require_english=not configs.english.active)
    runner = engines.load(engine)
    if engine != "local":
        snapshot = runner.data(manifest, out, configs)
        print_funnel(snapshot)
        print_rejects(snapshot, explain)
        return
    from rich.progress import Progress
    # bound to the terminal's stream now: img2dataset's output is redirected to its log while this runs
    with Progress(console=Console(file=sys.stderr), transient=True) as progress:
        task = progress.add_task("downloading shards", total=None)
        snapshot = runner.data(manifest, out, configs, lambda done, total: progress.update(task, completed=done,
                                                                                            total=total))
    print_funnel(snapshot)
    print_rejects(snapshot, explain)


@app.command()
@with_stage_options("cache")
def precompute(
    snapshot: Annotated[str, typer.Option(help="snapshot URL (OUT/snapshots/<id>)")],
    base: BASE,
    out: Annotated[str, typer.Option(help="cache root, local or s3://")],
    precision: Annotated[str, typer.Option(help="frozen parts on a GPU: no (fp32), bf16, fp16")] = "no",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print projected size and time; write nothing")] = False,
    engine: ENGINE = "prefect", *, configs: StageConfigs,
) -> None:
    """Precompute the frozen English side of a snapshot into a content-addressed cache (iap-precompute)."""
    from iap.data.snapshot import open_snapshot
    from iap.pipeline import engines
    from iap.presets.names import resolve_model
    base = resolve_model(base)
    snap = open_snapshot(snapshot)  # a missing snapshot: one message, before any work
    if dry_run:
        from iap.models import load_base
        from iap.system.runtime import detect
        _dry_run(snap, load_base(base, detect(precision)), configs.cache)
        return
    info = engines.load(engine).precompute(snapshot, base, out, configs, precision)
    samples = sum(s["rows"] for v in info.shards.values() for s in v)
    console.print(f"cache {info.key}{' (cached)' if info.cached else ''}: {samples} samples, "
                  f"{info.bytes / 1e6:.1f} MB, {info.seconds:.1f} s\n{info.url}")


@app.command()
@with_stage_options("download", "filter", "columns", "english", "cache", "train", "evaluate", "gate")
def train(out: Annotated[str, typer.Option(help="output root of the whole pipeline, local or s3://")],
          base: BASE = SD15,
          zh_encoder: ZH_ENCODER = ZH_768,
          manifest: Annotated[str | None, typer.Option(help="data source: a manifest to download")] = None,
          snapshot: Annotated[str | None, typer.Option(help="data source: an existing snapshot URL")] = None,
          synthetic: Annotated[int, typer.Option(help="data source: this many shapes-world rows (smoke runs)")] = 0,
          registry: Annotated[str | None, typer.Option(help="registry URL (default OUT/registry)")] = None,
          push_to_hub: Annotated[str | None, typer.Option(
              help="upload the exported pipeline to this Hub repo (user/name) if the registry promotes it")] = None,
          engine: ENGINE = "prefect", *, configs: StageConfigs) -> None:
    """The full pipeline (iap-train): data -> precompute -> train -> evaluate -> export -> register."""
    from iap.pipeline import engines
    from iap.pipeline.request import PipelineRequest
    request = PipelineRequest(out=out, base=base, zh_encoder=zh_encoder, manifest=manifest, snapshot=snapshot,
                              synthetic=synthetic, registry=registry, push_to_hub=push_to_hub)
    if engine != "local":  # one message before a flow starts (the local pipeline checks first thing itself;
        from iap.pipeline.preflight import (
            check_inputs,  # checking twice would hash a local base's weights twice)
        )
        check_inputs(out, base, zh_encoder, manifest, snapshot, synthetic)
    with stage_progress() as progress:
        result = engines.load(engine).train(request, configs, progress=progress)
    finish(result, engine)


@app.command()
@with_stage_options("download", "filter", "columns", "evaluate")
def evaluate(checkpoint: str,
             base: BASE,
             snapshot: Annotated[str | None, typer.Option(help="snapshot URL (its --split is evaluated)")] = None,
             manifest: Annotated[str | None, typer.Option(
                 help="an evaluation set instead (image URL + Chinese + English, e.g. COCO-CN), downloaded whole")]
             = None,
             out: Annotated[str | None, typer.Option(help="with --manifest: where its data goes")] = None,
             untrained: Annotated[str | None, typer.Option(help="the encoder before training, for reference")] = None,
             split: str = "val", engine: ENGINE = "prefect", *, configs: StageConfigs) -> None:
    """Evaluate any checkpoint (iap-evaluate): a snapshot split, or an evaluation manifest."""
    from iap.data.manifest import check_manifest
    from iap.data.snapshot import open_snapshot
    from iap.pipeline import engines
    from iap.presets.names import resolve
    from iap.training.checkpoint import read_checkpoint_meta
    if (snapshot is None) == (manifest is None) or (manifest and not out):
        raise IapError("give --snapshot, or --manifest with --out")
    base, untrained = resolve(base, untrained or "")
    untrained = untrained or None
    read_checkpoint_meta(checkpoint)  # missing inputs: one message, before any work
    if snapshot:
        open_snapshot(snapshot)
    else:
        check_manifest(manifest, configs.columns)
    metrics = engines.load(engine).evaluate(checkpoint, snapshot, base, untrained, split, configs, manifest=manifest,
                                            out=out)
    for k, v in metrics.flat().items():
        console.print(f"{k:32} {v}")


@app.command()
def demo(workdir: Annotated[str, typer.Option(help="where everything goes, local or s3://")] = "demo",
         steps: TRAIN_STEPS = 600, engine: ENGINE = "prefect",
         base: Annotated[Literal["preset:shapes-teacher", "preset:shapes-teacher-xl"], typer.Option(
             help="the teacher: SD-1.x architecture, or SDXL's (two text towers, pooled embedding, time ids)")]
         = "preset:shapes-teacher") -> None:
    """The embedded default: the full pipeline on the shapes teacher and synthetic data; WORKDIR/summary.json."""
    from iap.config import TrainConfig
    from iap.pipeline import engines
    from iap.pipeline.demo import DEMO_TRAIN, run_demo
    try:
        cfg = TrainConfig.model_validate(DEMO_TRAIN.model_dump() | {"steps": steps})
    except ValueError as e:
        raise IapError(f"option --train-steps: {e.errors()[0]['msg']}") from e
    summary = run_demo(workdir, engines.load(engine), cfg, base=base)
    m = summary["metrics"]
    lines = [
        f"\n[bold]IAP demo done[/bold] in {summary['seconds_total']} s (registry: {summary['registry_status']})",
        f"  held-out IAP loss     {m['heldout_loss_before']:.5f} -> {m['heldout_loss_after']:.5f}"
        f"  (mismatched-caption level {m['mismatched_caption_loss']:.5f})",
        f"  zh->en retrieval top5 {m['retrieval_top5_before']:.1%} -> {m['retrieval_top5_after']:.1%}"
        f"  on {m['heldout_pairs']} held-out pairs of never-trained combinations",
    ]
    if "colour_accuracy_zh_after" in m:
        lines.append(f"  colour accuracy, {m['generated_prompts']} held-out Chinese prompts "
                     f"{m['colour_accuracy_zh_before']:.1%} -> {m['colour_accuracy_zh_after']:.1%}"
                     f"  (English prompts: {m['colour_accuracy_en_teacher']:.1%})")
    lines += [f"  report:   {summary['evaluation'].get('report', '-')}", f"  pipeline: {summary['pipeline_dir']}",
              f"  samples:  {summary['samples_dir']}", f"  summary:  {workdir.rstrip('/')}/summary.json (lineage, funnel, "
              f"flow runs)"]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


def _dry_run(snap, base_model, cfg) -> None:
    import time

    from iap.cache.budget import projected_bytes_per_sample
    from iap.cache.writer import compute_shard, default_batch_size
    from iap.data.reader import read_shard
    from iap.objective import Teacher
    rows = sum(snap.rows.get(s, 0) for s in cfg.splits)
    per = projected_bytes_per_sample(base_model, cfg)
    first = next(url for s in cfg.splits for url in snap.split_urls(s))
    probe = read_shard(first)[:cfg.batch_size or default_batch_size(base_model.device)]
    teacher = Teacher(base_model) if cfg.policy != "recompute" else None
    start = time.perf_counter()
    compute_shard(base_model, teacher, probe, cfg)
    per_sample_s = (time.perf_counter() - start) / len(probe)
    console.print(f"policy {cfg.policy}, {cfg.draws} draws, {rows} samples in {cfg.splits}\n"
                  f"  bytes/sample: latent {per['latent']:,}  English states {per['en_states']:,}  "
                  f"teacher targets {per['teacher']:,}  total {per['total']:,}\n"
                  f"  projected cache size {per['total'] * rows / 1e9:.3f} GB, "
                  f"projected time {per_sample_s * rows:.1f} s on this machine (measured on {len(probe)} samples)\n"
                  f"  budget max_gb={cfg.max_gb}: "
                  f"{'within' if cfg.max_gb is None or per['total'] * rows <= cfg.max_gb * 1e9 else 'OVER (precompute would stop)'}\n"
                  f"nothing was written")


