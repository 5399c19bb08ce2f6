"""Command-line options generated from the stage configs: one `--SECTION-FIELD` option per config field
(e.g. `--download-image-size`, `--train-steps`), named as the field's path in a `--config` JSON file, with
the field's type, choices, default and description. Precedence: the field's default < the `--config`
file's section < the option. One source of truth: adding a config field adds its option."""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ValidationError

from iap.errors import IapError


def config_classes() -> dict[str, type[BaseModel]]:
    """Every section a `--config` file or an option may name, and its config model."""
    from iap.cache.info import CacheConfig
    from iap.config import TrainConfig
    from iap.data.download import DownloadConfig
    from iap.data.english import EnglishConfig
    from iap.data.manifest import ManifestColumns
    from iap.data.snapshot import FilterConfig
    from iap.evaluation.config import EvalConfig
    from iap.release.registry import GateConfig
    return {"download": DownloadConfig, "filter": FilterConfig, "columns": ManifestColumns,
            "english": EnglishConfig, "cache": CacheConfig, "train": TrainConfig, "evaluate": EvalConfig,
            "gate": GateConfig}


SEP = "__"  # python name of an option: SECTION__FIELD


def with_stage_options(*sections: str) -> Callable:
    """Decorate a command whose last parameter is `configs: StageConfigs`: it gets `--config` and one option per
    field of each section, and receives the validated sections (the others at their defaults)."""
    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for name, p in sig.parameters.items() if name != "configs"]
        generated = [_parameter(section, name, field) for section in sections
                     for name, field in config_classes()[section].model_fields.items()]
        config_file = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option(help=f"JSON file with sections {', '.join(sections)} (options override it)")])

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {k: kwargs.pop(k) for k in list(kwargs) if SEP in k}
            from iap.pipeline.request import StageConfigs
            configs = build_configs(sections, kwargs.pop("config"), values)
            return fn(**kwargs, configs=StageConfigs(**configs))

        params = [*own, config_file, *generated]
        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command
    return decorate


def _parameter(section: str, name: str, field) -> inspect.Parameter:
    kind = _option_type(field.annotation)
    option = f"--{section}-{name.replace('_', '-')}"
    decls = [f"{option}/--{section}-no-{name.replace('_', '-')}"] if kind is bool else [option]
    info = typer.Option(*decls, help=f"{field.description or ''} (default: {_shown(field)})".strip(),
                        show_default=False, rich_help_panel=f"{section} options", metavar=_metavar(field.annotation)
                        if kind is str else None)
    return inspect.Parameter(f"{section}{SEP}{name}", inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, info])


def _shown(field) -> str:
    """The default as it would be typed on the command line."""
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        return ",".join(map(str, default)) or '""'
    if isinstance(default, dict):
        return json.dumps(default)
    return "none" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def _option_type(annotation) -> Any:
    """bool (a flag), a Literal (choices), else str: the text is parsed by `_parse` and validated by the model."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool or typing.get_origin(annotation) is Literal:
        return annotation
    return str


def _metavar(annotation) -> str:
    text = str(annotation)
    for name, metavar in (("dict", "JSON"), ("list", "A,B"), ("float", "FLOAT"), ("int", "INT")):
        if name in text:
            return metavar
    return "TEXT"


def _parse(cls: type[BaseModel], name: str, raw: Any) -> Any:
    """Text from the command line as the field wants it: JSON objects, comma-separated lists (or JSON arrays),
    `none`."""
    if not isinstance(raw, str):
        return raw
    annotation = str(cls.model_fields[name].annotation)
    if raw.lower() in ("none", "null") and "None" in annotation:
        return None
    if "dict" in annotation:
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise IapError(f"option --{_flag(cls, name)}: not a JSON object ({e})") from e
    if "list" in annotation:
        if raw.startswith("["):  # a JSON array, for items that hold commas (regexes: a{1,8})
            try:
                items = json.loads(raw)
                if isinstance(items, list):
                    return items
            except json.JSONDecodeError:
                pass
        return [x for x in raw.split(",") if x]
    return raw


def _flag(cls: type[BaseModel], name: str) -> str:
    section = next(s for s, c in config_classes().items() if c is cls)
    return f"{section}-{name.replace('_', '-')}"


def read_config_file(path: Path, sections: tuple[str, ...]) -> dict[str, dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise IapError(f"config file {path}: cannot read it as UTF-8 JSON ({e})") from e
    if not isinstance(data, dict):
        raise IapError(f"config file {path}: expected an object with sections {', '.join(sections)}")
    unknown = set(data) - set(sections)
    if unknown:
        raise IapError(f"config file {path}: unknown section(s) {', '.join(sorted(unknown))}; use "
                       f"{', '.join(sections)}")
    for section, fields in data.items():
        if not isinstance(fields, dict):
            raise IapError(f"config file {path}: section '{section}' must be an object of fields, not "
                           f"{json.dumps(fields)[:40]}")
    return data


def build_configs(sections: tuple[str, ...], path: Path | None, values: dict[str, Any]) -> dict[str, BaseModel]:
    """The config model of each section; a bad value is one message naming the option or the file's field."""
    from_file = read_config_file(path, sections) if path else {}
    configs = {}
    for section in sections:
        cls = config_classes()[section]
        given = {name.split(SEP, 1)[1]: v for name, v in values.items()
                 if name.startswith(section + SEP) and v is not None}
        given = {name: _parse(cls, name, v) for name, v in given.items()}
        try:
            configs[section] = cls.model_validate({**from_file.get(section, {}), **given})
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            where = (f"option --{section}-{field.replace('_', '-')}" if field in given else
                     f"config file {path}: field '{section}.{'.'.join(map(str, err['loc']))}'")
            raise IapError(f"{where}: {err['msg']}") from e
    return configs
