"""The `iap` command line. User errors end in one message (exit 2), never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from iap.errors import IapError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer an English Stable Diffusion model to Chinese prompts with IAP (images as pivots).")
models_app = typer.Typer(no_args_is_help=True, help="Model presets.")
app.add_typer(models_app, name="models")
console = Console()


def global_options(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="show third-party output (load reports, img2dataset, progress bars)")] = False) -> None:
    if verbose:
        from iap.quiet import loud
        loud()


app.callback()(global_options)


@models_app.command("tiny")
def models_tiny(folder: Path, seed: int = 0) -> None:
    """Write the tiny preset (random-init base pipeline + Chinese BERT) to FOLDER."""
    from iap.models.tiny import TinyConfig, write_tiny
    write_tiny(folder, TinyConfig(seed=seed))
    console.print(f"tiny preset written: {folder}/base (Stable Diffusion folder), {folder}/zh_encoder")


@models_app.command("shapes-teacher")
def models_shapes_teacher(
    folder: Path, seed: int = 0,
    unet_steps: Annotated[int, typer.Option(help="denoiser training steps (the committed teacher: 3000)")] = 3000,
    evaluate: Annotated[bool, typer.Option(help="then measure English accuracy on held-out combos")] = True,
) -> None:
    """Train the shapes teacher (a small English Stable Diffusion that draws the shapes world) from scratch
    on CPU into FOLDER. The committed preset (preset:shapes-teacher) is this command with the defaults."""
    from iap.models.shapes_teacher import (
        GUIDANCE,
        TeacherConfig,
        english_accuracy,
        held_out_prompts,
        train_shapes_teacher,
        write_card,
    )
    train_shapes_teacher(folder, TeacherConfig(seed=seed, unet_steps=unet_steps), log=console.print)
    prompts = held_out_prompts(per_combo=3) if evaluate else []
    acc = {g: english_accuracy(folder, prompts, guidance_scale=g) for g in (GUIDANCE, 7.5)} if evaluate else {}
    write_card(folder, acc, len(prompts))
    for g, a in acc.items():
        console.print(f"held-out combos, {len(prompts)} English prompts, guidance {g}: " +
                      ", ".join(f"{k} {v:.1%}" for k, v in a.items()))


def _live_source(base_model, encoder, cfg, snapshot: str | None, n_train: int):
    """(source, objective, lineage) for live training (no cache): a snapshot's train split or synthetic
    shapes-world triples, in memory."""
    from iap.objective import Teacher, make_objective

    teacher = None if cfg.objective == "embedding-mse" else Teacher(base_model)
    objective = make_objective(cfg.objective, teacher, cfg.layer_weights)
    if snapshot:
        from iap.data.snapshot import open_snapshot
        from iap.source import snapshot_source
        snap = open_snapshot(snapshot)
        return snapshot_source(base_model, encoder, snap, "train")[0], objective, {"snapshot_id": snap.id}
    from iap.data import shapes
    from iap.source import build_in_memory_source, image_size
    samples = [s for s in shapes.samples(2 * n_train, cfg.seed) if not shapes.is_held_out(s.combo)][:n_train]
    size = image_size(base_model)
    source = build_in_memory_source(base_model, encoder, [shapes.render(s, size) for s in samples],
                                    [s.caption_en for s in samples], [s.caption_zh for s in samples])
    return source, objective, {"data": f"shapes:{n_train}"}


@app.command("train")
def train_cmd(
    base: Annotated[str, typer.Option(help="base model: HF id or diffusers folder")],
    zh_encoder: Annotated[str, typer.Option(help="Chinese encoder: HF id or folder")],
    out: Annotated[Path, typer.Option(help="run directory (checkpoints; resumes if present)")],
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON file")] = None,
    cache: Annotated[str | None, typer.Option(help="train from this cache (iap precompute)")] = None,
    snapshot: Annotated[str | None, typer.Option(help="train live from this snapshot's train split")] = None,
    steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
    objective: str | None = None, checkpoint_every: int | None = None,
    n_train: Annotated[int, typer.Option(help="without --cache/--snapshot: synthetic triples")] = 1200,
    num_processes: Annotated[int | None, typer.Option(help="data-parallel processes (torchrun)")] = None,
    accelerate_config: Annotated[str | None, typer.Option(help="accelerate config file (GPUs, nodes)")] = None,
    lineage: Annotated[str | None, typer.Option(help="JSON merged into the checkpoints' lineage")] = None,
) -> None:
    """Train the Chinese encoder from a cache, a snapshot, or synthetic shapes-world triples."""
    import json as _json

    from iap.config import TrainConfig, load_config
    from iap.launch import inside_launch, run_launched
    from iap.models import load_chinese_encoder
    from iap.train import train

    cfg = load_config(config, TrainConfig) if config else TrainConfig()
    overrides = {"steps": steps, "batch_size": batch_size, "lr": lr, "objective": objective,
                 "checkpoint_every": checkpoint_every, "num_processes": num_processes,
                 "accelerate_config": accelerate_config}
    cfg = TrainConfig.model_validate({**cfg.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    from iap.models.hub import check_pair
    check_pair(base, zh_encoder)  # from configs alone: a mismatched pair fails before anything is loaded
    if cfg.distributed and not inside_launch():
        run_launched(sys.argv[1:], cfg.num_processes, cfg.accelerate_config, log=console.print)
        return
    from iap.models import load_base
    from iap.models.base import weights_fingerprint
    from iap.objective import EmptyPrompt
    from iap.runtime import detect
    runtime = detect(cfg.mixed_precision)
    found = {"base": base, "base_fingerprint": weights_fingerprint(base)}
    if cache:
        from iap.cache import open_cache
        from iap.wiring import from_cache
        info = open_cache(cache, base_fingerprint=found["base_fingerprint"])
        found |= {"cache_key": info.key, "cache_url": info.url, "snapshot_id": info.snapshot_id}
        run = from_cache(info, cfg, base, zh_encoder, runtime, lambda: load_base(base, runtime))
        encoder, objective_fn, source, empty = run.encoder, run.objective, run.source, run.empty
    else:
        base_model = load_base(base, runtime)
        en_empty = base_model.encode_english([""]).float().cpu()
        encoder = load_chinese_encoder(zh_encoder, base_model.cross_attention_dim, max_length=en_empty.shape[1])
        source, objective_fn, data = _live_source(base_model, encoder, cfg, snapshot, n_train)
        found |= data
        empty = EmptyPrompt.pair(en_empty, encoder)
    result = train(cfg, encoder, objective_fn, source, out, log=console.print,
                   lineage=found | (_json.loads(lineage) if lineage else {}), empty=empty)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"checkpoint: {result.checkpoint}  ({result.samples_per_second:.1f} samples/s)")


@app.command()
def precompute(
    snapshot: Annotated[str, typer.Option(help="snapshot URL (OUT/snapshots/<id>)")],
    base: Annotated[str, typer.Option(help="base model: HF id or diffusers folder")],
    out: Annotated[str, typer.Option(help="cache root, local or s3://")],
    policy: str = "recompute", positions: int = 64, draws: int = 2, dtype: str = "float16",
    latent: str = "mean", splits: str = "train,val",
    max_gb: Annotated[float, typer.Option(help="refuse a cache projected larger than this (GB)")] = 500.0,
    precision: Annotated[str, typer.Option(help="frozen parts on a GPU: no (fp32), bf16, fp16")] = "no",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print projected size and time; write nothing")] = False,
) -> None:
    """Precompute the frozen English side of a snapshot into a content-addressed cache."""
    from pydantic import ValidationError

    from iap.cache import CacheConfig
    from iap.cache import precompute as run
    from iap.data.snapshot import open_snapshot
    from iap.models import load_base
    from iap.models.base import weights_fingerprint
    try:
        cfg = CacheConfig(policy=policy, positions=positions, draws=draws, dtype=dtype, latent=latent,
                          splits=[s for s in splits.split(",") if s], max_gb=max_gb)
    except ValidationError as e:
        err = e.errors()[0]
        raise IapError(f"option --{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from e
    from iap.runtime import detect
    runtime = detect(precision)
    snap = open_snapshot(snapshot)
    if dry_run:
        _dry_run(snap, load_base(base, runtime), cfg)
        return
    info = run(snap, lambda: load_base(base, runtime), weights_fingerprint(base), out, cfg, log=console.print)
    samples = sum(s["rows"] for v in info.shards.values() for s in v)
    console.print(f"cache {info.key}{' (cached)' if info.cached else ''}: {samples} samples, "
                  f"{info.bytes / 1e6:.1f} MB, {info.seconds:.1f} s\n{info.url}")


def _dry_run(snap, base_model, cfg) -> None:
    import time

    from iap.cache import _compute_shard, default_batch_size, projected_bytes_per_sample
    from iap.data.reader import read_shard
    from iap.objective import Teacher
    rows = sum(snap.rows.get(s, 0) for s in cfg.splits)
    per = projected_bytes_per_sample(base_model, cfg)
    first = next(url for s in cfg.splits for url in snap.split_urls(s))
    probe = read_shard(first)[:cfg.batch_size or default_batch_size(base_model.device)]
    teacher = Teacher(base_model) if cfg.policy != "recompute" else None
    start = time.perf_counter()
    _compute_shard(base_model, teacher, probe, cfg)
    per_sample_s = (time.perf_counter() - start) / len(probe)
    console.print(f"policy {cfg.policy}, {cfg.draws} draws, {rows} samples in {cfg.splits}\n"
                  f"  bytes/sample: latent {per['latent']:,}  English states {per['en_states']:,}  "
                  f"teacher targets {per['teacher']:,}  total {per['total']:,}\n"
                  f"  projected cache size {per['total'] * rows / 1e9:.3f} GB, "
                  f"projected time {per_sample_s * rows:.1f} s on this machine (measured on {len(probe)} samples)\n"
                  f"  budget max_gb={cfg.max_gb}: "
                  f"{'within' if cfg.max_gb is None or per['total'] * rows <= cfg.max_gb * 1e9 else 'OVER (precompute would stop)'}\n"
                  f"nothing was written")


@app.command("export")
def export_cmd(checkpoint: Path, out: Path,
               base: Annotated[str, typer.Option(help="the base model the checkpoint was trained for")]) -> None:
    """Write a standard diffusers Stable Diffusion folder whose text encoder is the Chinese one."""
    from iap.export import export_pipeline
    console.print(f"exported: {export_pipeline(checkpoint, base, out)}")


@app.command()
def generate(prompts: list[str], pipeline: Annotated[Path, typer.Option(help="exported pipeline folder")],
             out: Annotated[Path, typer.Option(help="PNG path (prompt i > 0 gets a _i suffix)")] = Path("image.png"),
             seed: int = 0, steps: int = 25, guidance_scale: float = 7.5,
             precision: Annotated[str, typer.Option(help="on a GPU: fp16, bf16 or no (fp32)")] = "fp16") -> None:
    """Generate one image per prompt, e.g. iap generate "蓝色背景上的一个大红色圆形" --pipeline OUT."""
    from iap.generate import generate as run
    from iap.generate import load_pipeline
    from iap.runtime import detect
    images = run(load_pipeline(pipeline, detect(precision)), prompts, seed=seed, steps=steps, guidance_scale=guidance_scale)
    for i, img in enumerate(images):
        path = out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        console.print(f"wrote {path}")


@app.command()
def synth(folder: Path, n: int = 200, seed: int = 0, broken: Annotated[int, typer.Option(
        help="add this many rows of each broken kind (404, corrupt, tiny, slow, empty zh, English in zh, dups)")] = 0,
          base_url: str = "http://127.0.0.1:8765",
          image_size: Annotated[int, typer.Option(help="image side in pixels (real bases: 512)")] = 64) -> None:
    """Write shapes-world images and a bilingual manifest whose URLs point at BASE_URL."""
    from iap.data.synth import write_synth
    manifest = write_synth(folder, n, seed, base_url, broken, image_px=image_size)
    console.print(f"wrote {manifest}; serve it with: iap serve {folder} --port {base_url.rsplit(':', 1)[-1]}")


@app.command()
def serve(folder: Path, port: int = 8765) -> None:
    """Serve FOLDER over HTTP on 127.0.0.1:PORT until interrupted."""
    import time

    from iap.data.synth import serve as start
    server = start(folder, port)
    console.print(f"serving {folder} on http://127.0.0.1:{port} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


@app.command()
def data(
    manifest: Annotated[str, typer.Option(help="Parquet/CSV/TSV/JSONL path, glob or s3:// URL")],
    out: Annotated[str, typer.Option(help="output root, local or s3://")],
    url_col: str = "url", caption_zh_col: str = "caption_zh", caption_en_col: str = "caption_en",
    key_col: str = "key",
    encoding: Annotated[str, typer.Option(help="text encoding of a CSV/TSV/JSONL manifest (e.g. gbk)")] = "utf-8",
    en_join: Annotated[str | None, typer.Option(help="table with English captions for a Chinese-only manifest")] = None,
    en_join_on: Annotated[str, typer.Option(help="column both tables share: url or key")] = "url",
    translate: Annotated[str | None, typer.Option(
        help="translation model for rows without English (HF id, folder, preset:tiny-mt)")] = None,
    image_size: int = 256, min_image_size: int = 0, timeout: int = 10, retries: int = 0,
    processes: int = 1, threads: int = 16, output_format: str = "parquet", distributor: str = "multiprocessing",
    where: Annotated[str | None, typer.Option(help="extra SQL predicate over row columns")] = None,
    split_key: str = "key", val_fraction: float = 0.05, test_fraction: float = 0.05,
    min_side: int = 0, max_aspect: float = 3.0,
) -> None:
    """Download a manifest with img2dataset and filter it with DuckDB into a dataset snapshot."""
    from dataclasses import asdict

    from pydantic import ValidationError
    from rich.progress import Progress

    from iap.data.download import DownloadConfig
    from iap.data.english import EnglishConfig
    from iap.data.manifest import ManifestColumns
    from iap.data.pipeline import run_data
    from iap.storage import check_reachable
    check_reachable(out)
    from iap.data.snapshot import FilterConfig
    try:
        dl = DownloadConfig(image_size=image_size, min_image_size=min_image_size, timeout=timeout, retries=retries,
                            processes_count=processes, thread_count=threads, output_format=output_format,
                            distributor=distributor)
        flt = FilterConfig(where=where, split_key=split_key, val_fraction=val_fraction, test_fraction=test_fraction,
                           min_side=min_side, max_aspect=max_aspect)
        cols = ManifestColumns(url=url_col, caption_zh=caption_zh_col, caption_en=caption_en_col, key=key_col,
                               encoding=encoding)
        english = EnglishConfig(join=en_join, join_on=en_join_on, translate=translate)
    except ValidationError as e:
        err = e.errors()[0]
        raise IapError(f"option --{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from e
    # bound to the terminal's stream now: img2dataset's output is redirected to its log while this runs
    with Progress(console=Console(file=sys.stderr), transient=True) as progress:
        task = progress.add_task("downloading shards", total=None)
        report, snapshot = run_data(manifest, out, dl, flt, cols,
                                    on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                                    english=english)
    print_funnel(asdict(snapshot))


def print_funnel(snapshot: dict) -> None:
    """The snapshot's funnel as a table, then its row counts and URL."""
    from rich.table import Table
    table = Table(title=f"snapshot {snapshot['id']}" + (" (cached)" if snapshot.get("cached") else ""))
    for col in ("stage", "rule", "removed", "remaining"):
        table.add_column(col, justify="right" if col in ("removed", "remaining") else "left")
    for f in snapshot["funnel"]:
        table.add_row(f["stage"], f["rule"], str(f["removed"]), str(f["remaining"]))
    console.print(table)
    console.print(f"rows: {snapshot['rows']}\nsnapshot: {snapshot['url']}")


@app.command()
def compare(
    snapshot: Annotated[str, typer.Option(help="snapshot URL")],
    base: Annotated[str, typer.Option(help="base model id or folder")],
    zh_encoder: Annotated[str, typer.Option(help="Chinese encoder to start from")],
    out: Annotated[Path, typer.Option(help="where runs, caches and compare.json go")],
    objectives: str = "pivot,separate,embedding-mse,eps-distill",
    policies: Annotated[str, typer.Option(help="cache policies to train pivot from")] = "recompute,store,store-sampled",
    steps: int = 300, batch_size: int = 16, lr: float = 2e-3,
    samples: Annotated[int, typer.Option(help="held-out prompts to draw per run")] = 64,
    guidance_scale: Annotated[float, typer.Option(help="guidance for the drawings (shapes teacher: 3)")] = 7.5,
) -> None:
    """Train and evaluate several objectives and cache policies on one snapshot; print one table."""
    from rich.table import Table

    from iap.compare import COLUMNS
    from iap.compare import compare as run
    from iap.config import TrainConfig
    from iap.data.snapshot import open_snapshot
    from iap.evaluate import EvalConfig
    from iap.models import load_base
    from iap.models.presets import resolve
    base, zh_encoder = resolve(base, zh_encoder, out)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 20),
                      checkpoint_every=steps, log_every=max(1, steps // 5))
    from iap.runtime import detect
    rows = run(load_base(base, detect()), zh_encoder, open_snapshot(snapshot), out, cfg,
               tuple(o for o in objectives.split(",") if o), tuple(p for p in policies.split(",") if p),
               EvalConfig(samples=samples, guidance_scale=guidance_scale), log=console.print)
    table = Table(title=f"IAP objectives and cache policies, {steps} steps each")
    for col in ("objective", "teacher", *COLUMNS):
        table.add_column(col)
    for r in rows:
        table.add_row(r["objective"], r["teacher"], *(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                                                       for c in COLUMNS))
    console.print(table)


registry_app = typer.Typer(no_args_is_help=True, help="The checkpoint registry.")
app.add_typer(registry_app, name="registry")
REGISTRY_OPT = Annotated[str, typer.Option(help="registry URL (local or s3://)")]


@registry_app.command("ls")
def registry_ls(registry: REGISTRY_OPT) -> None:
    """List checkpoints with status, gating metrics and reason."""
    from rich.table import Table

    from iap.registry import Registry
    table = Table()
    for col in ("checkpoint", "status", "heldout_loss", "retrieval_top1", "base", "reason"):
        table.add_column(col)
    for e in Registry(registry).entries():
        table.add_row(e.checkpoint_id, e.status, f"{e.metrics.get('heldout_loss', float('nan')):.5g}",
                      f"{e.metrics.get('retrieval_top1', float('nan')):.3f}", e.base_fingerprint, e.reason)
    console.print(table)


@registry_app.command("show")
def registry_show(checkpoint_id: str, registry: REGISTRY_OPT) -> None:
    """Show one entry with its metrics and lineage."""
    import json as _json
    from dataclasses import asdict

    from iap.registry import Registry
    entry = Registry(registry).get(checkpoint_id)
    if entry is None:
        raise IapError(f"registry {registry}: no entry for checkpoint {checkpoint_id}")
    console.print_json(_json.dumps(asdict(entry)))


@registry_app.command("promote")
def registry_promote(checkpoint_id: str, registry: REGISTRY_OPT) -> None:
    """Promote an entry by hand; the previously promoted one of its base becomes a candidate."""
    from iap.registry import Registry
    entry = Registry(registry).promote(checkpoint_id)
    console.print(f"{entry.checkpoint_id}: {entry.status}")


def run(typer_app: typer.Typer) -> None:
    """Run a CLI app; a user error (IapError) is one line on stderr and exit code 2. What the command
    starts ends with it, however it ends (iap.reaper)."""
    from diffusers.utils import logging as diffusers_logging

    from iap.reaper import start_reaper
    start_reaper()
    diffusers_logging.disable_progress_bar()
    try:
        typer_app()
    except IapError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {e}", highlight=False)
        sys.exit(2)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
