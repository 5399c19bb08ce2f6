"""The `iap` command: the library's commands plus flow-backed ones.

`data`, `precompute`, `train`, `evaluate` and `demo` run the same Prefect flows a deployment runs
(ephemeral mode without a server), so behaviour is identical with or without one. `iap server
up|down` starts the real local path. `python -m iap` is the library-only CLI (no Prefect).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from iap import cli as library_cli
from iap.errors import IapError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

FLOW_BACKED = {"data", "precompute", "train", "demo"}
app = typer.Typer(add_completion=False, no_args_is_help=True, help=library_cli.app.info.help)
for command in library_cli.app.registered_commands:
    name = command.name or command.callback.__name__
    if name not in FLOW_BACKED and name != "train_cmd":
        app.registered_commands.append(command)
app.registered_groups.extend(library_cli.app.registered_groups)
app.callback()(library_cli.global_options)
server_app = typer.Typer(no_args_is_help=True, help="A local Prefect server, pool, deployments and worker.")
app.add_typer(server_app, name="server")
console = library_cli.console


@app.command()
def demo(workdir: Annotated[Path, typer.Option(help="where everything goes")] = Path("demo"),
         steps: int = 600) -> None:
    """Run the full iap-train flow on the shapes teacher and synthetic data; writes WORKDIR/summary.json."""
    from flows.demo import DEMO_TRAIN, run_demo
    summary = run_demo(workdir, DEMO_TRAIN.model_copy(update={"steps": steps}))
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
              f"  samples:  {summary['samples_dir']}", f"  summary:  {workdir / 'summary.json'} (lineage, funnel, "
              f"flow runs)"]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


@app.command()
def data(manifest: Annotated[str, typer.Option(help="Parquet/CSV/TSV/JSONL path, glob or s3:// URL")],
         out: Annotated[str, typer.Option(help="output root, local or s3://")],
         config: Annotated[Path | None, typer.Option(
             help="JSON with download/filter/columns/english sections")] = None) -> None:
    """Run the iap-data flow: img2dataset download + DuckDB filter into a snapshot."""
    from flows.data import iap_data
    from iap.data.manifest import load_manifest
    from iap.storage import check_reachable
    sections = _sections(config, ("download", "filter", "columns", "english"))
    check_reachable(out)  # bad storage or a bad manifest: one message, before the flow starts
    english = sections.get("english")
    load_manifest(manifest, sections.get("columns"), require_english=not (english and english.active))
    snapshot = iap_data(manifest, out, **sections)
    library_cli.print_funnel(snapshot)


@app.command()
def precompute(snapshot: Annotated[str, typer.Option(help="snapshot URL")],
               base: Annotated[str, typer.Option(help="base model id or folder")],
               out: Annotated[str, typer.Option(help="cache root, local or s3://")],
               policy: str = "recompute", positions: int = 64, draws: int = 2, dtype: str = "float16",
               max_gb: Annotated[float, typer.Option(help="refuse a cache projected larger than this (GB)")] = 500.0,
               precision: Annotated[str, typer.Option(help="frozen parts on a GPU: no (fp32), bf16, fp16")] = "no",
               ) -> None:
    """Run the iap-precompute flow (use `python -m iap precompute --dry-run` for a projection)."""
    from flows.precompute import iap_precompute
    from iap.cache import CacheConfig
    from iap.data.snapshot import open_snapshot
    open_snapshot(snapshot)  # a missing snapshot: one message, before the flow starts
    from pydantic import ValidationError
    try:
        cfg = CacheConfig(policy=policy, positions=positions, draws=draws, dtype=dtype, max_gb=max_gb)
    except ValidationError as e:
        err = e.errors()[0]
        raise IapError(f"option --{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from e
    info = iap_precompute(snapshot, base, out, cfg, precision)
    console.print(f"cache {info['key']}: {info['bytes'] / 1e6:.1f} MB\n{info['url']}")


@app.command()
def train(out: Annotated[str, typer.Option(help="output root of the whole pipeline")],
          base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5", zh_encoder: str = "hfl/chinese-roberta-wwm-ext",
          manifest: str | None = None, snapshot: str | None = None, synthetic: int = 0,
          config: Annotated[Path | None, typer.Option(
              help="JSON with download/filter/cache/train/gate/columns/evaluate/english sections")] = None) -> None:
    """Run the full iap-train flow: data -> precompute -> train -> evaluate -> export -> register."""
    from flows.train import iap_train
    from tasks.inputs import check_inputs
    check_inputs.fn(out, base, zh_encoder, manifest, snapshot, synthetic)  # one message, before the flow starts
    result = iap_train(out=out, base=base, zh_encoder=zh_encoder, manifest=manifest, snapshot=snapshot,
                       synthetic=synthetic,
                       **_sections(config, ("download", "filter", "cache", "train", "gate", "columns", "evaluate",
                                            "english")))
    console.print(f"checkpoint {result['checkpoint_id']}: {result['status']} ({result['reason']}); flow run "
                  f"{result['flow_run_id']}")  # the run's last log lines above say where every output went


@app.command()
def evaluate(checkpoint: str, base: Annotated[str, typer.Option(help="the base model the checkpoint was trained for")],
             snapshot: Annotated[str | None, typer.Option(help="snapshot URL (its --split is evaluated)")] = None,
             manifest: Annotated[str | None, typer.Option(
                 help="an evaluation set instead (image URL + Chinese + English, e.g. COCO-CN), downloaded whole")]
             = None,
             out: Annotated[str | None, typer.Option(help="with --manifest: where its data goes")] = None,
             untrained: str | None = None, split: str = "val",
             config: Annotated[Path | None, typer.Option(
                 help="JSON with download/filter/columns/evaluate sections")] = None) -> None:
    """Run the iap-evaluate flow on any checkpoint: a snapshot split, or an evaluation manifest."""
    from flows.evaluate import iap_evaluate
    from iap.checkpoint import read_checkpoint_meta
    from iap.data.manifest import load_manifest
    from iap.data.snapshot import open_snapshot
    if (snapshot is None) == (manifest is None) or (manifest and not out):
        raise IapError("give --snapshot, or --manifest with --out")
    sections = _sections(config, ("download", "filter", "columns", "evaluate"))
    read_checkpoint_meta(checkpoint)  # missing inputs: one message, before the flow starts
    if snapshot:
        open_snapshot(snapshot)
    else:
        load_manifest(manifest, sections.get("columns"))
    generation = sections.pop("evaluate", None)
    for k, v in iap_evaluate(checkpoint, snapshot, base, untrained, split, manifest=manifest, out=out,
                             **({"generation": generation} if generation else {}), **sections).items():
        console.print(f"{k:32} {v}")


@server_app.command("up")
def server_up(port: int = 4200, out: str = "runs/prefect",
              manifest: Annotated[str | None, typer.Option(
                  help="manifest of the daily iap-data/refresh (else $IAP_MANIFEST; paused when it does not exist)")]
              = None) -> None:
    """Start a Prefect server on 127.0.0.1, a process pool, all deployments and a worker."""
    from iap.server import up
    state = up(port, out, manifest=manifest)
    console.print(f"Prefect UI: {state['api'].removesuffix('/api')}\n{state['refresh']}\n"
                  f"export PREFECT_API_URL={state['api']}\n"
                  "prefect deployment run iap-train/smoke --watch")


@server_app.command("down")
def server_down() -> None:
    """Stop the worker and server started by `iap server up`."""
    from iap.server import down
    down()
    console.print("stopped")


def _sections(path: Path | None, names: tuple[str, ...]) -> dict:
    """Stage configs from one JSON file; a bad field names the file, the section and the field."""
    if path is None:
        return {}
    import json

    from pydantic import ValidationError
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IapError(f"config file {path}: cannot read it as JSON ({e})") from e
    unknown = set(data) - set(names)
    if unknown:
        raise IapError(f"config file {path}: unknown section(s) {', '.join(sorted(unknown))}; use {', '.join(names)}")
    out = {}
    for name in names:
        if name in data:
            try:
                out[name] = _config_class(name).model_validate(data[name])
            except ValidationError as e:
                err = e.errors()[0]
                raise IapError(f"config file {path}: field '{name}.{'.'.join(map(str, err['loc']))}': "
                               f"{err['msg']}") from e
    return out


def _config_class(name: str):
    from iap.cache import CacheConfig
    from iap.config import TrainConfig
    from iap.data.download import DownloadConfig
    from iap.data.english import EnglishConfig
    from iap.data.manifest import ManifestColumns
    from iap.data.snapshot import FilterConfig
    from iap.evaluate import EvalConfig
    from iap.registry import GateConfig
    return {"download": DownloadConfig, "filter": FilterConfig, "cache": CacheConfig, "train": TrainConfig,
            "gate": GateConfig, "columns": ManifestColumns, "evaluate": EvalConfig, "english": EnglishConfig}[name]


def main() -> None:
    _user_errors_without_traceback()
    library_cli.run(app)


def _drop_user_error_traceback(record) -> bool:
    """A user error (IapError) ends as one line from iap.cli.run; Prefect's console keeps its state lines but
    not a traceback for it (its API log, what the UI shows, keeps everything)."""
    if record.exc_info and isinstance(record.exc_info[1], IapError):
        record.exc_info, record.exc_text = None, None
    return True


def _user_errors_without_traceback() -> None:
    import logging

    from prefect.logging.configuration import setup_logging
    setup_logging()
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console, not the API
            handler.addFilter(_drop_user_error_traceback)


if __name__ == "__main__":
    main()
