"""The `iap` program (console script and `python -m iap`). Its quiet defaults (iap.system.quiet) are the program's,
set before transformers and diffusers are first imported, which read them once; `import iap` alone, in a
user's own script, changes no environment."""

from __future__ import annotations


def main() -> None:
    from iap.system.quiet import quiet_libraries
    quiet_libraries()
    from iap.cli.main import main as cli_main
    cli_main()
