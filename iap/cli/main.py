"""The `iap` command line (also `python -m iap`): every command group registered, plain sectioned help, and
one message (exit 2) for a user error, never a traceback."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from iap.cli import recipes, stages, tools, worker  # noqa: F401  (each registers its commands)
from iap.cli.common import app, console, models_app, registry_app, server_app
from iap.errors import IapError, StorageError


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
    from iap.system.reaper import start_reaper
    start_reaper()
    _library_logs_to_console()
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
