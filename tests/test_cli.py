"""Every `iap` verb meets a user error (a missing file, a wrong option value, a bad config file) with one
`error:` line or one usage message and exit code 2, never a traceback and before any work."""

from __future__ import annotations

import json
import sys

import pytest

from iap.cli import main as cli


@pytest.fixture
def run_iap(monkeypatch, capsys):
    monkeypatch.setenv("IAP_NO_REAPER", "1")

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["iap", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        captured = capsys.readouterr()
        return exit_.value.code, captured.out + captured.err
    return run


@pytest.fixture
def files(tmp_path, tiny_dir):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    bad_field = tmp_path / "field.json"
    bad_field.write_text(json.dumps({"download": {"image_size": 2}}))
    bad_section = tmp_path / "section.json"
    bad_section.write_text(json.dumps({"downloads": {}}))
    (tmp_path / "reg").mkdir()  # a registry with nothing in it
    not_an_object = tmp_path / "five.json"
    not_an_object.write_text(json.dumps({"train": 5}))
    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes('{"train": {"lr": 0.001}} # caf\u00e9'.encode("latin-1"))
    return {"tmp": tmp_path, "tiny": tiny_dir, "bad_json": bad_json, "bad_field": bad_field,
            "bad_section": bad_section, "not_an_object": not_an_object, "not_utf8": not_utf8}


CASES = {
    "data: missing manifest": (["data", "--manifest", "{tmp}/none.parquet", "--out", "{tmp}/o"], "none.parquet"),
    "data: value out of range": (["data", "--manifest", "m", "--out", "o", "--download-image-size", "4"],
                                 "option --download-image-size"),
    "data: not a number": (["data", "--manifest", "m", "--out", "o", "--filter-val-fraction", "x"],
                           "option --filter-val-fraction"),
    "data: not a choice": (["data", "--manifest", "m", "--out", "o", "--download-output-format", "zip"], "zip"),
    "data: unknown option": (["data", "--manifest", "m", "--out", "o", "--image-size", "64"], "--image-size"),
    "data: config not JSON": (["data", "--manifest", "m", "--out", "o", "--config", "{bad_json}"], "bad.json"),
    "data: config field": (["data", "--manifest", "m", "--out", "o", "--config", "{bad_field}"],
                           "field 'download.image_size'"),
    "data: config section": (["data", "--manifest", "m", "--out", "o", "--config", "{bad_section}"], "downloads"),
    "train: config section not an object": (["train", "--out", "o", "--config", "{not_an_object}"],
                                            "section 'train' must be an object"),
    "train: config not UTF-8": (["train", "--out", "o", "--config", "{not_utf8}"], "latin1.json"),
    "data: missing config": (["data", "--manifest", "m", "--out", "o", "--config", "{tmp}/none.json"], "none.json"),
    "data: unknown engine": (["data", "--manifest", "m", "--out", "o", "--engine", "spark"], "engine 'spark'"),
    "precompute: missing snapshot": (["precompute", "--snapshot", "{tmp}/snap", "--base", "{tiny}/base", "--out",
                                      "{tmp}/c"], "snapshot"),
    "precompute: not a choice": (["precompute", "--snapshot", "s", "--base", "b", "--out", "c", "--cache-policy",
                                  "all"], "all"),
    "precompute: out of range": (["precompute", "--snapshot", "s", "--base", "b", "--out", "c", "--cache-draws",
                                  "0"], "option --cache-draws"),
    "train: no data source": (["train", "--out", "{tmp}/r", "--base", "{tiny}/base", "--zh-encoder",
                               "{tiny}/zh_encoder"], "exactly one data source"),
    "train local: no data source": (["train", "--engine", "local", "--out", "{tmp}/r"], "exactly one data source"),
    "train local: missing base": (["train", "--engine", "local", "--out", "{tmp}/r", "--base", "{tmp}/nope",
                                   "--synthetic", "10"], "does not exist"),
    "train: missing base": (["train", "--out", "{tmp}/r", "--base", "{tmp}/nope", "--zh-encoder",
                             "{tiny}/zh_encoder", "--synthetic", "10"], "does not exist"),
    "train: bad steps": (["train", "--out", "{tmp}/r", "--synthetic", "10", "--train-steps", "0"],
                         "option --train-steps"),
    "train: bad JSON option": (["train", "--out", "{tmp}/r", "--synthetic", "10", "--train-layer-weights", "x:1"],
                               "option --train-layer-weights"),
    "generate: no steps": (["generate", "猫", "--pipeline", "{tmp}/p", "--steps", "0"], "--steps"),
    "generate: negative guidance": (["generate", "猫", "--pipeline", "{tmp}/p", "--guidance-scale", "-5"],
                                    "--guidance-scale"),
    "evaluate: no snapshot or manifest": (["evaluate", "{tmp}/ckpt", "--base", "{tiny}/base"], "--snapshot"),
    "evaluate: missing checkpoint": (["evaluate", "{tmp}/ckpt", "--base", "{tiny}/base", "--snapshot", "{tmp}/s"],
                                     "ckpt"),
    "demo: bad steps": (["demo", "--workdir", "{tmp}/d", "--train-steps", "0"], "option --train-steps"),
    "demo: not a number": (["demo", "--workdir", "{tmp}/d", "--train-steps", "many"], "--train-steps"),
    "export: missing checkpoint": (["export", "{tmp}/ckpt", "{tmp}/p", "--base", "{tiny}/base"], "ckpt"),
    "generate: missing pipeline": (["generate", "一只猫", "--pipeline", "{tmp}/p"], "p"),
    "serve: missing folder": (["serve", "{tmp}/none"], "none"),
    "compare: missing snapshot": (["compare", "--snapshot", "{tmp}/s", "--base", "{tiny}/base", "--zh-encoder",
                                   "{tiny}/zh_encoder", "--out", "{tmp}/c"], "snapshot"),
    "registry show: unknown id": (["registry", "show", "abc", "--registry", "{tmp}/reg"], "abc"),
    "registry promote: unknown id": (["registry", "promote", "abc", "--registry", "{tmp}/reg"], "abc"),
    "train-worker: missing cache": (["train-worker", "--base", "{tiny}/base", "--zh-encoder", "{tiny}/zh_encoder",
                                     "--out", "{tmp}/r", "--cache", "{tmp}/cache"], "cache"),
    "unknown verb": (["fit"], "fit"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_message_and_exit_2(case, run_iap, files):
    args, expected = CASES[case]
    code, output = run_iap(*(a.format(**files) for a in args))
    assert code == 2, output
    assert expected in output, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 or "Usage:" in output, output  # one error line, or click's one usage message


def _commands(group, path=()):
    import click
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        elif not command.hidden:
            yield (*path, name), command


def test_help_shows_every_option_name_whole_at_80_columns():
    """Issue 27, finding 1: rich's help table cut option names at 80 columns (`--download-image…`)."""
    import re

    import typer
    from typer.testing import CliRunner
    group = typer.main.get_command(cli.app)
    runner = CliRunner()
    checked = 0
    for path, command in _commands(group):
        result = runner.invoke(cli.app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        assert max(map(len, result.output.splitlines())) <= 80, path
        words = set(re.findall(r"--[a-z0-9-]+", result.output))
        for param in command.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("--"):
                    assert name in words, (path, name)
                    checked += 1
    assert checked > 150  # every stage option of every command


def test_every_option_a_nothing_left_message_names_exists():
    """Issue 27, finding 2: a message that says which option changes a rule must name a real one."""
    import typer

    from iap.data.snapshot import RULE_FIELDS, rule_options
    data = typer.main.get_command(cli.app).commands["data"]
    names = {name for p in data.params for name in (*p.opts, *p.secondary_opts)}
    named = [o for rule in RULE_FIELDS for o in rule_options(rule)]
    assert len(named) > 20 and set(named) <= names, set(named) - names
