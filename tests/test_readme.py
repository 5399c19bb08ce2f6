"""Every shell command the README shows exists as written, with the options shown: each `iap` / `python -m
iap` line is parsed by the real command line (unknown option, missing required option or bad value fails),
bench scripts and `prefect` commands by their --help, files by their path. Bare `iap`, `python` and `prefect`
need the venv activated, so the README must say so before its first bare command."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VENV = Path(sys.executable).parent


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(block start offset, command) for each command of the README's ```bash blocks (continuations joined,
    comments dropped, split at && ; & |)."""
    found = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        joined = block.group(1).replace("\\\n", " ")
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            for part in re.split(r"\s*(?:&&|;|\|)\s*|\s+&\s*$|\s+&\s+", line):
                if part.strip():
                    found.append((block.start(), part.strip()))
    return found


COMMANDS = shell_lines(README)


def _program(words: list[str]) -> tuple[str, list[str]]:
    """Which program a README command runs, and its arguments."""
    head = words[0].removeprefix(".venv/bin/")
    if head == "python" and words[1:3] == ["-m", "iap"]:
        return "python -m iap", words[3:]
    if head == "python":
        return "script", words[1:]
    return head, words[1:]


def _leaf(app: typer.Typer, args: list[str]):
    """The (sub)command a README line names, and the arguments left for it."""
    command = typer.main.get_command(app)
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    return command, args


def test_the_readme_shows_commands():
    programs = {_program(shlex.split(c))[0] for _, c in COMMANDS}
    assert {"iap", "prefect", "script", "bash"} <= programs, programs


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=[c[:60] for _, c in COMMANDS])
def test_each_readme_command_exists_with_its_options(command):
    words = shlex.split(command)
    program, args = _program(words)
    if program in ("iap", "python -m iap"):
        from iap.cli.main import app  # `python -m iap` is the same app
        from iap.cli.options import SEP, build_configs
        leaf, rest = _leaf(app, args)
        assert not hasattr(leaf, "commands"), f"{command}: no such command"
        ctx = leaf.make_context(leaf.name, list(rest))  # raises on an unknown option, a missing one or a bad value
        stage_values = {k: v for k, v in ctx.params.items() if SEP in k}
        sections = tuple(dict.fromkeys(k.split(SEP)[0] for k in stage_values))
        build_configs(sections, None, stage_values)  # a stage option's value is checked by its config model
    elif program == "script":
        script = ROOT / args[0]
        assert script.exists(), command
        help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                   timeout=300, cwd=ROOT).stdout
        for option in [a.split("=")[0] for a in args[1:] if a.startswith("--")]:
            assert option in help_text, f"{command}: {option} not in {script.name} --help"
    elif program == "prefect":
        sub = [a for a in args if not a.startswith("-")][:2]
        help_text = subprocess.run([str(VENV / "prefect"), *sub, "--help"], capture_output=True, text=True,
                                   timeout=300).stdout
        assert "Usage" in help_text, command
        for option in [a.split("=")[0] for a in args if a.startswith("--")]:
            assert option in help_text, f"{command}: {option} not in prefect {' '.join(sub)} --help"
    elif program == "bash":
        assert (ROOT / args[0]).exists() and (args[1:] in ([], ["dev"])), command
    elif program in ("pytest", "export", "echo", "source"):
        if program == "source":
            assert args == [".venv/bin/activate"], command
        if program == "pytest" and "-m" in args:  # a marker the README names is one the suite declares
            import tomllib
            declared = {m.split(":")[0] for m in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
                "ini_options"]["markers"]}
            named = set(re.findall(r"[a-z_0-9]+", args[args.index("-m") + 1])) - {"not", "and", "or"}
            assert named <= declared, f"{command}: markers {named - declared} are not declared in pyproject.toml"
    else:
        pytest.fail(f"README command with an unknown program: {command}")


def test_bare_commands_come_after_the_venv_is_activated():
    """After `bash install.sh`, only .venv/bin/ has iap, prefect and the project's python."""
    activate = README.find("source .venv/bin/activate")
    bare = [(at, c) for at, c in COMMANDS if shlex.split(c)[0] in ("iap", "python", "prefect", "pytest")]
    assert not bare or 0 <= activate < min(at for at, _ in bare), bare[:3]
