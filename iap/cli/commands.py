"""The `iap` command line (also `python -m iap`). User errors end in one message (exit 2), never a traceback.

Stage commands (data, precompute, train, evaluate, demo) take their options from the stage configs
(iap.cli.options: `--SECTION-FIELD`, or a `--config` JSON file) and run on an engine (iap.pipeline.engines): `prefect`
by default, the Prefect flows a deployment runs; `local`, the library in this process. Both give the same ids
and bytes. The other commands are the library's tools."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from iap.cli.options import with_stage_options
from iap.config import SD15, ZH_768
from iap.errors import IapError, StorageError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Transfer an English Stable Diffusion model to Chinese prompts with IAP (images as pivots).")
models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Model presets.")
app.add_typer(models_app, name="models")
server_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="A local Prefect server, pool, deployments and worker.")
app.add_typer(server_app, name="server")
console = Console()


def _installed_engine(name: str) -> str:
    from iap.pipeline import engines
    if name not in engines.names():
        raise typer.BadParameter(f"engine '{name}' is not installed; use one of: {', '.join(engines.names())}")
    return name


# one declaration per shared argument, so every command spells and explains it the same way (URLs are str:
# a Path would turn s3://b/x into s3:/b/x)
BASE = Annotated[str, typer.Option("--base", help="base model: HF id, diffusers folder or preset:NAME (for a "
                                   "checkpoint: the base it was trained for)")]
ZH_ENCODER = Annotated[str, typer.Option("--zh-encoder", help="Chinese encoder to start from: HF id, folder or "
                                         "preset:NAME")]
TRAIN_STEPS = Annotated[int, typer.Option("--train-steps", help="training steps (TrainConfig.steps)")]
ENGINE = Annotated[str, typer.Option(callback=_installed_engine, help="prefect: run the Prefect flow (an ephemeral "
                                     "API without a server); local: the library in this process. Same ids and "
                                     "outputs")]


def global_options(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="show third-party output (load reports, img2dataset, progress bars)")] = False) -> None:
    if verbose:
        from iap.system.quiet import loud
        loud()


app.callback()(global_options)


# ---------------------------------------------------------------- stage commands (engine: prefect or local)


@app.command()
@with_stage_options("download", "filter", "columns", "english")
def data(manifest: Annotated[str, typer.Option(help="Parquet/CSV/TSV/JSONL path, glob or s3:// URL")],
         out: Annotated[str, typer.Option(help="output root, local or s3://")],
         engine: ENGINE = "prefect",
         explain: Annotated[int, typer.Option(min=0, help="then list up to N removed rows of every filter rule "
                                                          "(the snapshot's rejects.parquet holds them all)")] = 0,
         *, configs: dict) -> None:
    """Download a manifest with img2dataset and filter it with DuckDB into a dataset snapshot (iap-data)."""
    from iap.data.manifest import load_manifest
    from iap.pipeline import engines
    from iap.system.storage import check_reachable
    check_reachable(out)  # bad storage or a bad manifest: one message, before any work
    load_manifest(manifest, configs["columns"], require_english=not configs["english"].active)
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
    engine: ENGINE = "prefect", *, configs: dict,
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
        _dry_run(snap, load_base(base, detect(precision)), configs["cache"])
        return
    info = engines.load(engine).precompute(snapshot, base, out, configs, precision)
    samples = sum(s["rows"] for v in info["shards"].values() for s in v)
    console.print(f"cache {info['key']}{' (cached)' if info['cached'] else ''}: {samples} samples, "
                  f"{info['bytes'] / 1e6:.1f} MB, {info['seconds']:.1f} s\n{info['url']}")


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
          engine: ENGINE = "prefect", *, configs: dict) -> None:
    """The full pipeline (iap-train): data -> precompute -> train -> evaluate -> export -> register."""
    from iap.pipeline import engines
    if engine != "local":  # one message before a flow starts (the local pipeline checks first thing itself;
        from iap.pipeline.preflight import (
            check_inputs,  # checking twice would hash a local base's weights twice)
        )
        check_inputs(out, base, zh_encoder, manifest, snapshot, synthetic)
    with stage_progress() as progress:
        result = engines.load(engine).train(out=out, base=base, zh_encoder=zh_encoder, manifest=manifest,
                                            snapshot=snapshot, synthetic=synthetic, registry=registry,
                                            push_to_hub=push_to_hub, **configs, log=console.print, progress=progress)
    _finish(result, engine)


@contextmanager
def stage_progress():
    """A progress bar per stage (precompute shards, training steps, evaluation image sets) on stderr, gone when
    the command ends; the local engine reports into it (under Prefect, the run page shows progress)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)
        yield update


def _finish(result: dict, engine: str) -> None:
    """Where every output went. Under Prefect the run's last log lines (also shown by --watch) said it."""
    if engine == "local":
        from iap.pipeline.stages import describe
        console.print(describe(result), highlight=False, soft_wrap=True)
        return
    console.print(f"checkpoint {result['checkpoint_id']}: {result['status']} ({result['reason']}); flow run "
                  f"{result['flow_run_id']}" + (f"\n{result['hub']}" if "hub" in result else ""),
                  highlight=False, soft_wrap=True)


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
             split: str = "val", engine: ENGINE = "prefect", *, configs: dict) -> None:
    """Evaluate any checkpoint (iap-evaluate): a snapshot split, or an evaluation manifest."""
    from iap.data.manifest import load_manifest
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
        load_manifest(manifest, configs["columns"])
    metrics = engines.load(engine).evaluate(checkpoint, snapshot, base, untrained, split, configs, manifest=manifest,
                                            out=out)
    for k, v in metrics.items():
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


# ---------------------------------------------------------------- a local Prefect server


@server_app.command("up")
def server_up(port: int = 4200, out: str = "runs/prefect",
              manifest: Annotated[str | None, typer.Option(
                  help="manifest of the daily iap-data/refresh (else $IAP_MANIFEST; paused when it does not exist)")]
              = None) -> None:
    """Start a Prefect server on 127.0.0.1, a process pool, all deployments and a worker."""
    from iap.cli.server import up
    state = up(port, out, manifest=manifest)
    console.print(f"Prefect UI: {state['api'].removesuffix('/api')}\n{state['refresh']}\n"
                  f"export PREFECT_API_URL={state['api']}\n"
                  "prefect deployment run iap-train/smoke --watch")


@server_app.command("down")
def server_down() -> None:
    """Stop the worker and server started by `iap server up`."""
    from iap.cli.server import down
    down()
    console.print("stopped")


# ---------------------------------------------------------------- the library's tools


@models_app.command("tiny")
def models_tiny(
    folder: Path, seed: int = 0,
    shape: Annotated[Literal["sd1", "sd2", "sdxl"], typer.Option(
        help="sd1: SD-1.x-shaped; sd2: SD-2.x-shaped (v-prediction, wider cross-attention than the Chinese BERT); "
             "sdxl: SDXL-shaped (two text towers, pooled embedding, time ids)")] = "sd1",
) -> None:
    """Write a tiny preset (random-init base pipeline + Chinese BERT) to FOLDER."""
    from iap.presets.tiny import TINY_PRESETS, write_tiny
    name = {"sd1": "tiny", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}[shape]
    write_tiny(folder, replace(TINY_PRESETS[name], seed=seed), name)
    console.print(f"tiny preset written: {folder}/base (Stable Diffusion folder), {folder}/zh_encoder")


@models_app.command("shapes-teacher")
def models_shapes_teacher(
    folder: Path, seed: int = 0,
    unet_steps: Annotated[int, typer.Option(help="denoiser training steps (the committed teacher: 3000)")] = 3000,
    evaluate: Annotated[bool, typer.Option(help="then measure English accuracy on held-out combos")] = True,
    xl: Annotated[bool, typer.Option(help="SDXL architecture (two text towers, pooled embedding, time ids): "
                                          "the committed preset:shapes-teacher-xl")] = False,
) -> None:
    """Train the shapes teacher (a small English Stable Diffusion that draws the shapes world) from scratch
    on CPU into FOLDER. The committed presets (preset:shapes-teacher, preset:shapes-teacher-xl) are this
    command with the defaults (and --xl)."""
    from iap.shapes.teacher import (
        GUIDANCE,
        TEACHER_XL,
        TeacherConfig,
        english_accuracy,
        held_out_prompts,
        train_shapes_teacher,
        write_card,
    )
    cfg = TEACHER_XL if xl else TeacherConfig()
    train_shapes_teacher(folder, replace(cfg, seed=seed, unet_steps=unet_steps), log=console.print)
    prompts = held_out_prompts(per_combo=3) if evaluate else []
    acc = {g: english_accuracy(folder, prompts, guidance_scale=g) for g in (GUIDANCE, 7.5)} if evaluate else {}
    write_card(folder, acc, len(prompts))
    for g, a in acc.items():
        console.print(f"held-out combos, {len(prompts)} English prompts, guidance {g}: " +
                      ", ".join(f"{k} {v:.1%}" for k, v in a.items()))


@models_app.command("shapes-lora")
def models_shapes_lora(
    folder: Path, seed: int = 0,
    steps: Annotated[int, typer.Option(help="LoRA training steps (the committed LoRA: 1000)")] = 1000,
) -> None:
    """Train a LoRA of the shapes teacher (red drawn as blue) into FOLDER and measure its effect on English
    prompts. The committed preset (iap/presets/shapes-lora) is this command with the defaults."""
    from iap.presets.names import SHAPES_TEACHER
    from iap.shapes.lora import LoraTrainConfig, train_lora, write_card
    train_lora(SHAPES_TEACHER, folder, LoraTrainConfig(seed=seed, steps=steps), log=console.print)
    rates = write_card(folder, SHAPES_TEACHER)
    console.print(f"held-out combos, English prompts: effect rate {rates['with']['effect_rate']:.0%}, "
                  f"leak rate {rates['with']['leak_rate']:.0%} (without the LoRA: "
                  f"{rates['without']['effect_rate']:.0%}, {rates['without']['leak_rate']:.0%})")


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
    *, configs: dict,
) -> None:
    """Train the Chinese encoder alone from a cache, a snapshot, or synthetic shapes-world triples: the
    command every process of a launched (torchrun / accelerate) run executes, and the tests' trainer."""
    import json as _json

    from iap.models import load_chinese_encoder
    from iap.presets.names import resolve
    from iap.system.launch import inside_launch, run_launched
    from iap.training.loop import train
    base, zh_encoder = resolve(base, zh_encoder)
    cfg = configs["train"]
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


def _dry_run(snap, base_model, cfg) -> None:
    import time

    from iap.cache.budget import projected_bytes_per_sample
    from iap.cache.writer import _compute_shard, default_batch_size
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
def export_cmd(checkpoint: Annotated[str, typer.Argument(help="checkpoint folder or URL (RUN/checkpoints/step-N)")],
               out: Annotated[str, typer.Argument(help="pipeline folder to write, local or s3://")],
               base: BASE,
               push_to_hub: Annotated[str | None, typer.Option(
                   help="then upload it to this Hub model repo (user/name; created private if missing; "
                        "credentials: HF_TOKEN or `hf auth login`)")] = None) -> None:
    """Write a standard diffusers Stable Diffusion folder whose text encoder is the Chinese one, with a
    Hub-ready model card."""
    from iap.presets.names import resolve_model
    from iap.release.export import export_pipeline
    from iap.release.export import push_to_hub as push
    folder = export_pipeline(checkpoint, resolve_model(base), out)
    console.print(f"exported: {folder}")
    if push_to_hub:
        console.print(f"pushed: {push(folder, push_to_hub)}")


@app.command()
def generate(prompts: list[str],
             pipeline: Annotated[str, typer.Option(help="exported pipeline folder, local or s3://")],
             out: Annotated[str, typer.Option(help="PNG path, local or s3:// (prompt i > 0 gets a _i suffix)")]
             = "image.png",
             seed: int = 0, steps: Annotated[int, typer.Option(min=1, help="denoising steps")] = 25,
             guidance_scale: Annotated[float, typer.Option(min=1.0, help="classifier-free guidance (1: none; "
                                                                        "diffusers guides above 1)")] = 7.5,
             precision: Annotated[str, typer.Option(help="on a GPU: fp16, bf16 or no (fp32)")] = "fp16") -> None:
    """Generate one image per prompt, e.g. iap generate "蓝色背景上的一个大红色圆形" --pipeline OUT."""
    import io

    from PIL import Image

    from iap.models.generate import generate as run
    from iap.models.generate import load_pipeline
    from iap.system.runtime import detect
    from iap.system.storage import check_reachable, fetch_folder, write_file
    check_reachable(out)
    folder = fetch_folder(pipeline, "model_index.json", "pipelines")
    images = run(load_pipeline(folder, detect(precision)), prompts, seed=seed, steps=steps, guidance_scale=guidance_scale)
    stem, dot, suffix = out.rpartition(".") if "." in out.rsplit("/", 1)[-1] else (out, "", "")
    for i, img in enumerate(images):
        path = out if i == 0 else f"{stem}_{i}{dot}{suffix}"
        png = io.BytesIO()
        img.save(png, format=Image.registered_extensions().get(f".{suffix.lower()}", "PNG"))
        write_file(path, png.getvalue())
        console.print(f"wrote {path}")


@app.command()
def synth(folder: Path, n: int = 200, seed: int = 0, broken: Annotated[int, typer.Option(
        help="add this many rows of each broken kind (404, corrupt, tiny, slow, empty zh, English in zh, dups)")] = 0,
          base_url: str = "http://127.0.0.1:8765",
          image_size: Annotated[int, typer.Option(help="image side in pixels (real bases: 512)")] = 64) -> None:
    """Write shapes-world images and a bilingual manifest whose URLs point at BASE_URL."""
    from iap.shapes.synth import write_synth
    manifest = write_synth(folder, n, seed, base_url, broken, image_px=image_size)
    console.print(f"wrote {manifest}; serve it with: iap serve {folder} --port {base_url.rsplit(':', 1)[-1]}")


@app.command()
def serve(folder: Path, port: int = 8765) -> None:
    """Serve FOLDER over HTTP on 127.0.0.1:PORT until interrupted."""
    import time

    from iap.shapes.synth import serve as start
    if not folder.is_dir():
        raise IapError(f"{folder} is not a folder (write one with: iap synth {folder})")
    server = start(folder, port)
    console.print(f"serving {folder} on http://127.0.0.1:{port} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


def print_funnel(snapshot: dict) -> None:
    """The snapshot's funnel as a table, then its row counts and URL."""
    from rich.table import Table
    from rich.text import Text

    from iap.data.snapshot import funnel_table
    table = Table(title=f"snapshot {snapshot['id']}" + (" (cached)" if snapshot.get("cached") else ""))
    for col in ("stage", "rule", "removed", "remaining", "examples removed"):
        table.add_column(col, justify="right" if col in ("removed", "remaining") else "left")
    for f in funnel_table(snapshot["funnel"]):
        table.add_row(f["stage"], f["rule"], str(f["removed"]), str(f["remaining"]), Text(f["examples"]))
    console.print(table)
    console.print(f"rows: {snapshot['rows']}\nsnapshot: {snapshot['url']}")


def print_rejects(snapshot: dict, per_rule: int) -> None:
    """Up to per_rule removed rows of every filter rule: the caption as it came and as the rules read it."""
    if not per_rule:
        return
    from rich.table import Table
    from rich.text import Text

    from iap.data.snapshot import open_snapshot, printable, read_rejects
    table = Table(title=f"removed rows (up to {per_rule} per rule)")
    for col in ("rule", "key", "caption_zh (as it came)", "caption_zh (normalised)", "caption_en (as it came)"):
        table.add_column(col)
    for r in read_rejects(open_snapshot(snapshot["url"]), per_rule):
        table.add_row(*(Text(printable(r[c], 40)) for c in ("removed_by", "key", "caption_zh_raw", "caption_zh",
                                                             "caption_en_raw")))
    console.print(table)


@app.command()
def compare(
    snapshot: Annotated[str, typer.Option(help="snapshot URL")],
    base: BASE,
    zh_encoder: ZH_ENCODER,
    out: Annotated[str, typer.Option(help="where runs, caches and compare.json go, local or s3://")],
    objectives: str = "pivot,separate,embedding-mse,eps-distill",
    policies: Annotated[str, typer.Option(help="cache policies to train pivot from")] = "recompute,store,store-sampled",
    steps: TRAIN_STEPS = 300,
    batch_size: Annotated[int, typer.Option("--train-batch-size", help="TrainConfig.batch_size")] = 16,
    lr: Annotated[float, typer.Option("--train-lr", help="TrainConfig.lr")] = 2e-3,
    samples: Annotated[int, typer.Option(help="held-out prompts to draw per run")] = 64,
    guidance_scale: Annotated[float, typer.Option(help="guidance for the drawings (shapes teacher: 3)")] = 7.5,
) -> None:
    """Train and evaluate several objectives and cache policies on one snapshot; print one table."""
    from rich.table import Table

    from iap.config import TrainConfig
    from iap.data.snapshot import open_snapshot
    from iap.evaluation.heldout import EvalConfig
    from iap.models import load_base
    from iap.pipeline.compare import COLUMNS
    from iap.pipeline.compare import compare as run
    from iap.presets.names import resolve
    base, zh_encoder = resolve(base, zh_encoder, out)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 20),
                      checkpoint_every=steps, log_every=max(1, steps // 5))
    from iap.system.runtime import detect
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


registry_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The checkpoint registry.")
app.add_typer(registry_app, name="registry")
REGISTRY_OPT = Annotated[str, typer.Option(help="registry URL (local or s3://)")]


@registry_app.command("ls")
def registry_ls(registry: REGISTRY_OPT) -> None:
    """List checkpoints with status, gating metrics and reason."""
    from rich.table import Table

    table = Table()
    for col in ("checkpoint", "status", "heldout_loss", "retrieval_top1", "base", "reason"):
        table.add_column(col)
    for e in _existing_registry(registry).entries():
        table.add_row(e.checkpoint_id, e.status, f"{e.metrics.get('heldout_loss', float('nan')):.5g}",
                      f"{e.metrics.get('retrieval_top1', float('nan')):.3f}", e.base_fingerprint, e.reason)
    console.print(table)


def _existing_registry(url: str):
    """The registry at `url` for a read-only command: one message, and nothing created, when it is not there."""
    from iap.release.registry import Registry
    from iap.system.storage import check_reachable
    check_reachable(url, "registry")
    registry = Registry(url)
    if not registry.exists():
        raise IapError(f"registry {url} does not exist (nothing was registered there)")
    return registry


@registry_app.command("show")
def registry_show(checkpoint_id: str, registry: REGISTRY_OPT) -> None:
    """Show one entry with its metrics and lineage."""
    import json as _json
    from dataclasses import asdict

    entry = _existing_registry(registry).get(checkpoint_id)
    if entry is None:
        raise IapError(f"registry {registry}: no entry for checkpoint {checkpoint_id}")
    console.print_json(_json.dumps(asdict(entry)))


@registry_app.command("promote")
def registry_promote(checkpoint_id: str, registry: REGISTRY_OPT) -> None:
    """Promote an entry by hand; the previously promoted one of its base becomes a candidate."""
    entry = _existing_registry(registry).promote(checkpoint_id)
    console.print(f"{entry.checkpoint_id}: {entry.status}")


class SectionedHelp(typer.core.TyperCommand):
    """Plain help (every option's full name at any width, unlike rich's table, which cuts them at 80 columns),
    with the options grouped under their section (download options, train options, ...)."""

    def format_options(self, ctx, formatter) -> None:
        groups: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                groups.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for name, records in groups.items():
            with formatter.section(name[:1].upper() + name[1:]):
                formatter.write_dl(records)


def _sectioned(*apps: typer.Typer) -> None:
    for a in apps:
        for command in a.registered_commands:
            if command.cls in (None, typer.core.TyperCommand):
                command.cls = SectionedHelp


_sectioned(app, models_app, server_app, registry_app)


def _library_logs_to_console() -> None:
    """The library's log lines (logging.getLogger("iap...")) at INFO, printed as the commands print."""
    import logging

    from rich.logging import RichHandler
    library = logging.getLogger("iap")
    if not any(getattr(h, "iap_console", False) for h in library.handlers):
        handler = RichHandler(console=console, show_time=False, show_level=False, show_path=False,
                              markup=False, highlighter=None)
        handler.iap_console = True
        library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False  # printed once, here, not again by a root handler (Prefect's console)


def run(typer_app: typer.Typer) -> None:
    """Run a CLI app; a user error (IapError) is one line on stderr and exit code 2. What the command
    starts ends with it, however it ends (iap.system.reaper)."""
    from diffusers.utils import logging as diffusers_logging

    from iap.system.reaper import start_reaper
    start_reaper()
    _library_logs_to_console()
    diffusers_logging.disable_progress_bar()
    try:
        typer_app()
    except IapError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {e}", highlight=False)
        sys.exit(2)
    except StorageError as e:  # not the user's input: exit 1, still one message
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {e}", highlight=False)
        sys.exit(1)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
