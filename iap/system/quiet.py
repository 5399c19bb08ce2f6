"""Quiet by default, loud on request: third-party load reports, banners and progress bars stay out of the
terminal unless IAP_VERBOSE=1 (`iap --verbose`). What a nested tool prints goes to a log file instead."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",  # "BertModel LOAD REPORT ... pooler MISSING" tables
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights", "Writing model shards" bars
    "NO_ALBUMENTATIONS_UPDATE": "1",
    # every tqdm bar (diffusers' "Loading pipeline components", img2dataset's): tqdm reads it when imported,
    # so no command has to import diffusers at start-up (3.5 s) only to turn its bars off
    "TQDM_DISABLE": "1",
}  # not WANDB_MODE: --train-report-to wandb must work, and a user's own script keeps its wandb


def verbose() -> bool:
    return os.environ.get("IAP_VERBOSE", "") not in ("", "0")


def quiet_libraries() -> None:
    """Environment defaults the libraries read when first imported (a user's own setting wins); set by the
    program (iap.entry, the flows), never by `import iap`."""
    if not verbose():
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)


def loud() -> None:
    """`--verbose`: undo the quiet defaults this process set (not the user's own)."""
    os.environ["IAP_VERBOSE"] = "1"
    for name, value in QUIET_ENV.items():
        if os.environ.get(name) == value:
            os.environ.pop(name)
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_warning()
    if "diffusers" in sys.modules:
        sys.modules["diffusers"].logging.set_verbosity_warning()


@contextmanager
def output_to(log: Path) -> Iterator[Path]:
    """Send this process's stdout, and that of the processes it starts meanwhile, to `log` (file-descriptor
    level, so spawned workers inherit it; tqdm bars off in them), and this process's sys.stdout/stderr too;
    a no-op when verbose."""
    if verbose():
        yield log
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    saved_fd, saved_tqdm = os.dup(1), os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with open(log, "a", encoding="utf-8") as f, redirect_stdout(f), redirect_stderr(f):
            os.dup2(f.fileno(), 1)  # spawned workers write here
            yield log  # and this process's prints and tqdm bars (sys.stderr) here
            f.flush()
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        if saved_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_tqdm
