"""Multi-process launch for data-parallel training: re-run an `iap` command under torchrun or
`accelerate launch`. Inside the launched processes WORLD_SIZE is set, so they train instead of
launching again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from iap.errors import IapError


def inside_launch() -> bool:
    return "WORLD_SIZE" in os.environ


def launch_command(args: list[str], num_processes: int = 1, accelerate_config: str | None = None) -> list[str]:
    """The command that runs `python -m iap ARGS` in num_processes processes (torchrun, one node) or
    as an accelerate config file says (any number of GPUs and nodes)."""
    if accelerate_config:
        if not Path(accelerate_config).is_file():
            raise IapError(f"accelerate config '{accelerate_config}' does not exist")
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                "-m", "iap", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", "iap", *args]


def run_launched(args: list[str], num_processes: int = 1, accelerate_config: str | None = None,
                 log=print) -> None:
    """Run the launch command; a failed rank is one error naming the exit code."""
    cmd = launch_command(args, num_processes, accelerate_config)
    log("launching: " + " ".join(cmd[2:]))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise IapError(f"distributed training failed (exit code {code}); see the ranks' output above")
