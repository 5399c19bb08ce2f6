"""The library's tools: export, generate, compare, the registry, the local Prefect server, and the shapes
world's synthetic data and file server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iap.cli.common import BASE, REGISTRY_OPT, TRAIN_STEPS, ZH_ENCODER, app, console, registry_app, server_app
from iap.errors import IapError

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
    from iap.evaluation.config import EvalConfig
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


