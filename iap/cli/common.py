"""What every `iap` command shares: the command groups, the console, and one declaration of each shared
argument."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Transfer an English Stable Diffusion model to Chinese prompts with IAP (images as pivots).")
models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Model presets.")
app.add_typer(models_app, name="models")
server_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="A local Prefect server, pool, deployments and worker.")
app.add_typer(server_app, name="server")
registry_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The checkpoint registry.")
app.add_typer(registry_app, name="registry")
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
REGISTRY_OPT = Annotated[str, typer.Option(help="registry URL (local or s3://)")]
