"""Children die with the command that started them, even when it is killed with SIGKILL.

A command that is killed cannot clean up after itself, and what it started lives on: img2dataset's
worker processes keep downloading and writing, Prefect's temporary server keeps its port. So each
command starts a watchdog (`python -m iap.system.reaper PID`, in its own session so a Ctrl-C to the command's
group does not stop it first) that keeps a list of the command's descendants and, once the command is
gone, terminates those still running (SIGTERM, then SIGKILL after a grace period). Processes a command
starts in a new session on purpose (`iap server up`'s server and worker) are not its to reap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 5.0


def start_reaper() -> None:
    """Watch this process (set IAP_NO_REAPER=1 to skip)."""
    if os.environ.get("IAP_NO_REAPER"):
        return
    subprocess.Popen([sys.executable, "-m", "iap.system.reaper", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def watch(pid: int) -> None:
    """Record pid's descendants in its session until pid ends, then end those still running."""
    try:
        command = psutil.Process(pid)
        session, started = os.getsid(pid), command.create_time()
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    known: dict[int, psutil.Process] = {}
    while not _gone(command):
        try:
            for child in command.children(recursive=True):
                if child.pid != os.getpid() and os.getsid(child.pid) == session:
                    known[child.pid] = child
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
        time.sleep(POLL_S)
    known |= _orphans(session, started)  # started between the last poll and the command's end
    alive = [p for p in known.values() if not _gone(p)]  # is_running also checks the start time: no PID reuse
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _orphans(session: int, since: float) -> dict[int, psutil.Process]:
    """Processes of the session started after the command whose parent is gone (they were its)."""
    found = {}
    for p in psutil.process_iter():
        try:
            if (p.pid != os.getpid() and os.getsid(p.pid) == session and p.create_time() >= since
                    and (p.ppid() == 1 or not psutil.pid_exists(p.ppid()))):
                found[p.pid] = p
        except (psutil.Error, ProcessLookupError):
            continue
    return found


if __name__ == "__main__":
    watch(int(sys.argv[1]))
