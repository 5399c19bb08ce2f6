"""A checkpoint registry at a URL (local or s3://): one JSON entry per checkpoint id, queried as a
table with DuckDB.

Registration is idempotent (same checkpoint id -> same entry) and each entry is a single atomic
write, so concurrent registrations of different checkpoints never lose each other. A new entry is
promoted only when its gating metric beats the promoted checkpoint of the same base model (and it
clears the floor metric); otherwise it stays a candidate (or is rejected, below the floor) with the
reason recorded. Decisions for one base model hold a lock object (created exclusively: O_EXCL
locally, a conditional PUT on S3), so concurrent promoters leave exactly one promoted entry.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fsspec
from pydantic import Field, model_validator

from iap.config import StageConfig
from iap.errors import IapError
from iap.system.ids import content_id
from iap.system.storage import create_exclusive, is_local, remove_if_unchanged, write_atomic

LOCK_WAIT_S = 120  # a promoter waits this long for another one's decision
LOCK_STALE_S = 300  # a lock older than this was left by a killed promoter and is broken


def _is_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class GateConfig(StageConfig):
    metric: str = "heldout_loss"
    lower_is_better: bool = True
    floor_metric: str | None = "retrieval_top1"
    floor: float = Field(0.5, description="the floor metric must be at least this (higher is better)")
    semantic_metric: str | None = Field(
        None, description="a data world's score of generated images (iap.evaluation.worlds; shapes world: colour_accuracy) "
                          "that the semantic floor and gap judge")
    semantic_floor: float | None = Field(
        None, description="the semantic metric of images from held-out Chinese prompts must be at least this")
    semantic_gap: float | None = Field(
        None, description="and at most this far below the base's English prompts' (teacher_en_<metric>)")

    @model_validator(mode="after")
    def _semantic_gate_names_its_metric(self) -> GateConfig:
        if (self.semantic_floor is not None or self.semantic_gap is not None) and not self.semantic_metric:
            raise ValueError("semantic_floor and semantic_gap need semantic_metric (e.g. colour_accuracy)")
        return self


@dataclass
class Entry:
    checkpoint_id: str
    checkpoint_url: str
    base: str
    base_fingerprint: str
    metrics: dict
    lineage: dict = field(default_factory=dict)  # snapshot id, cache key, config, flow run id, ...
    pipeline_url: str = ""
    code_version: str = ""
    status: str = "candidate"  # candidate | promoted | rejected
    reason: str = ""
    registered_at: float = 0.0


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class Registry:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs = fsspec.get_fs_token_paths(self.url)[0]  # reading creates nothing (a typo makes no bucket)

    def exists(self) -> bool:
        return self.fs.exists(self.url)

    def _folders(self) -> None:
        """Before a write: local folders (an object store needs none; s3fs's makedirs would create a bucket)."""
        if is_local(self.fs):
            for sub in ("entries", "locks"):
                os.makedirs(f"{self.url}/{sub}", exist_ok=True)

    def _path(self, checkpoint_id: str) -> str:
        return f"{self.url}/entries/{checkpoint_id}.json"

    def _write(self, entry: Entry) -> None:
        self._folders()
        write_atomic(self._path(entry.checkpoint_id), json.dumps(asdict(entry), indent=1, ensure_ascii=False).encode(),
                     self.fs)

    def _read(self, path: str) -> Entry:
        return Entry(**json.loads(self.fs.cat_file(path)))  # one GET: never a torn read of a rewritten entry

    def get(self, checkpoint_id: str) -> Entry | None:
        try:
            return self._read(self._path(checkpoint_id))
        except FileNotFoundError:
            return None

    def entries(self) -> list[Entry]:
        self.fs.invalidate_cache(f"{self.url}/entries")  # other processes add entries
        out = [self._read(path) for path in sorted(self.fs.glob(f"{self.url}/entries/*.json"))]
        return sorted(out, key=lambda e: e.registered_at)

    @contextmanager
    def _decision(self, base_fingerprint: str) -> Iterator[Callable[[], None]]:
        """Hold the base model's promotion lock: one decision per base at a time, across machines. Yields a
        check to call before writing: it raises if the lock was broken as stale meanwhile (then another
        promoter holds it). The lock carries a token: release removes only this holder's lock."""
        path = f"{self.url}/locks/{content_id(base_fingerprint)}.lock"
        token = uuid.uuid4().hex
        self._folders()
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
                             "token": token}).encode()
        deadline = time.monotonic() + LOCK_WAIT_S
        while not create_exclusive(path, holder, self.fs):
            self._break_if_stale(path)
            if time.monotonic() > deadline:
                raise IapError(f"registry {self.url}: {path} has been held for over {LOCK_WAIT_S} s; if no "
                               "registration is running, a killed one left it: delete it")
            time.sleep(random.uniform(0.01, 0.1))

        def still_held() -> None:
            if self._lock_token(path) != token:
                raise IapError(f"registry {self.url}: this decision took over {LOCK_STALE_S} s and its lock was "
                               "broken as stale by another promoter; nothing was written: register again")
        try:
            yield still_held
        finally:
            remove_if_unchanged(path, holder, self.fs)  # only this holder's lock, never a successor's

    def _lock_token(self, path: str) -> str | None:
        try:
            return json.loads(self.fs.cat_file(path)).get("token")
        except (FileNotFoundError, ValueError, AttributeError):
            return None

    def _break_if_stale(self, path: str) -> None:
        """Remove a lock older than LOCK_STALE_S, judged by its content's time, or by the file's age when the
        content is unreadable (a full disk leaves an empty lock). Removed only if unchanged since it was read."""
        try:
            raw = self.fs.cat_file(path)
            try:
                at = float(json.loads(raw)["at"])
            except (ValueError, KeyError, TypeError):
                at = self.fs.modified(path).timestamp()
            if time.time() - at > LOCK_STALE_S:
                remove_if_unchanged(path, raw, self.fs)
        except FileNotFoundError:
            pass

    def promoted(self, base_fingerprint: str) -> Entry | None:
        return next((e for e in reversed(self.entries())
                     if e.base_fingerprint == base_fingerprint and e.status == "promoted"), None)

    def register(self, entry: Entry, gate: GateConfig | None = None) -> Entry:
        """Add the entry (or return the existing one for this checkpoint id) and decide promotion."""
        existing = self.get(entry.checkpoint_id)
        if existing is not None:
            return existing
        gate = gate or GateConfig()
        entry.code_version = entry.code_version or code_version()
        with self._decision(entry.base_fingerprint) as still_held:
            existing = self.get(entry.checkpoint_id)
            if existing is not None:
                return existing
            self._demote_all_but_newest(entry.base_fingerprint)
            entry.registered_at = time.time()
            entry.status, entry.reason = self._decide(entry, gate)
            current = self.promoted(entry.base_fingerprint) if entry.status == "promoted" else None
            still_held()
            self._write(entry)
            if current is not None:
                current.status, current.reason = "candidate", f"superseded by {entry.checkpoint_id}"
                self._write(current)
        return entry

    def _demote_all_but_newest(self, base_fingerprint: str) -> None:
        """A promoter killed between its two writes (the new promoted entry, then the old one's demotion)
        leaves two promoted: the next decision demotes all but the newest."""
        promoted = [e for e in self.entries() if e.base_fingerprint == base_fingerprint and e.status == "promoted"]
        for old in promoted[:-1]:
            old.status, old.reason = "candidate", f"superseded by {promoted[-1].checkpoint_id} (repaired)"
            self._write(old)

    def _decide(self, entry: Entry, gate: GateConfig) -> tuple[str, str]:
        if gate.metric not in entry.metrics:
            return "candidate", f"no '{gate.metric}' metric to gate on"
        judged = [m for m in (gate.metric, gate.floor_metric, gate.semantic_metric) if m and m in entry.metrics]
        broken = [f"{m}={entry.metrics[m]}" for m in judged if not _is_finite(entry.metrics[m])]
        if broken:  # a NaN never beats anything, so promoted it would block every later checkpoint
            return "rejected", f"{', '.join(broken)} is not a finite number"
        if gate.floor_metric and entry.metrics.get(gate.floor_metric, float("-inf")) < gate.floor:
            return "rejected", f"{gate.floor_metric}={entry.metrics.get(gate.floor_metric)} is below the floor {gate.floor}"
        semantic = _semantic_failure(entry.metrics, gate)
        if semantic:
            return "rejected", semantic
        current = self.promoted(entry.base_fingerprint)
        if current is None:
            return "promoted", "first checkpoint to pass the gate for this base model"
        new, old = entry.metrics[gate.metric], current.metrics.get(gate.metric)
        better = old is None or (new < old if gate.lower_is_better else new > old)
        if better:
            return "promoted", f"{gate.metric} {new:.6g} beats {old} of {current.checkpoint_id}"
        return "candidate", f"{gate.metric} {new:.6g} does not beat {old:.6g} of promoted {current.checkpoint_id}"

    def promote(self, checkpoint_id: str) -> Entry:
        """Promote an entry by hand (the previous promoted entry of its base becomes a candidate)."""
        entry = self.get(checkpoint_id)
        if entry is None:
            raise IapError(f"registry {self.url}: no entry for checkpoint {checkpoint_id}")
        with self._decision(entry.base_fingerprint) as still_held:
            current = self.promoted(entry.base_fingerprint)
            still_held()
            if current is not None and current.checkpoint_id != checkpoint_id:
                current.status, current.reason = "candidate", f"superseded by {checkpoint_id} (manual)"
                self._write(current)
            entry = self.get(checkpoint_id)
            entry.status, entry.reason = "promoted", "promoted by hand"
            self._write(entry)
        return entry


def _semantic_failure(metrics: dict, gate: GateConfig) -> str:
    """Why the generated images fail the semantic gate ('' when they pass or the gate is off)."""
    name = gate.semantic_metric
    if gate.semantic_floor is None and gate.semantic_gap is None:
        return ""
    zh, en = metrics.get(name), metrics.get(f"teacher_en_{name}")
    if zh is None:
        return f"no {name} metric for the semantic gate (generation off, or not the data world's metric)"
    if gate.semantic_floor is not None and zh < gate.semantic_floor:
        return f"{name}={zh:.3f} is below the semantic floor {gate.semantic_floor}"
    if gate.semantic_gap is not None and en is not None and en - zh > gate.semantic_gap:
        return f"{name}={zh:.3f} is more than {gate.semantic_gap} below the English {en:.3f}"
    return ""
