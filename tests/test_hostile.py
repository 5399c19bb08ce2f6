"""Hostile manifests (issue 30): a manifest comes from someone else, and the worker that reads it holds
credentials and weights. Each test plants what an attacker would write."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iap.data.manifest import ManifestColumns, load_manifest
from iap.data.pipeline import run_data
from tests.helpers import DOWNLOAD, FILTER, free_port


def test_a_manifest_cannot_read_local_files_into_the_snapshot(served, tmp_path):
    """file:, data: and ftp: rows are skipped as bad_url before any download; http(s) rows go on."""
    secret = served.parent / "images" / "000000.jpg"  # an image-shaped file on the worker's disk
    good = pq.read_table(served).to_pylist()[:4]
    planted = [{**good[0], "key": "file", "url": f"file://{secret}"},
               {**good[0], "key": "data", "url": "data:image/jpeg;base64," + base64.b64encode(secret.read_bytes()).decode()},
               {**good[0], "key": "ftp", "url": "ftp://127.0.0.1/x.jpg"},
               {**good[0], "key": "upper", "url": f"FILE://{secret}"}]
    manifest = tmp_path / "hostile.parquet"
    pq.write_table(pa.Table.from_pylist([*good, *planted]), manifest)
    m = load_manifest(str(manifest))
    assert m.skipped == {"bad_url": 4} and m.examples["bad_url"].startswith("key file: file://")
    report, snapshot = run_data(str(manifest), str(tmp_path / "out"), DOWNLOAD,
                                FILTER.model_copy(update={"val_fraction": 0, "test_fraction": 0}))
    assert report.skipped == {"bad_url": 4} and report.downloaded == 4
    funnel = {(f["stage"], f["rule"]): f["removed"] for f in snapshot.funnel}
    assert funnel[("manifest", "bad_url")] == 4
    kept = pq.read_table(f"{snapshot.url}/{snapshot.shards['train'][0]}")["key"].to_pylist()
    assert sorted(kept) == sorted(r["key"] for r in good)
    opened = load_manifest(str(manifest), ManifestColumns(url_schemes=["http", "https", "file"]))
    assert opened.skipped == {"bad_url": 2}  # the risk is the user's to take, by name


def test_iap_serve_serves_only_its_folder(tmp_path):
    from iap.shapes.synth import serve
    folder = tmp_path / "web"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.txt").write_text("ok")
    (tmp_path / "host-secret.txt").write_text("AWS_SECRET_ACCESS_KEY=planted")
    port = free_port()
    server = serve(folder, port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{base}/trickle/images/a.txt", timeout=10).read() == b"ok"
        for path in (f"/trickle/{tmp_path}/host-secret.txt", "/trickle//etc/hostname", "/trickle/../host-secret.txt",
                     "/trickle/images/../../host-secret.txt", "/../host-secret.txt"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path, timeout=10)
            assert e.value.code == 404, path
    finally:
        server.shutdown()


def test_an_infinite_learning_rate_is_refused_where_it_is_typed():
    from iap.cli.options import build_configs
    from iap.errors import IapError
    with pytest.raises(IapError, match="lr"):
        build_configs(("train",), None, {"train__lr": "inf"})
    with pytest.raises(IapError, match="guidance"):
        build_configs(("evaluate",), None, {"evaluate__guidance_scale": "nan"})


def test_a_diverging_run_stops_with_one_message_and_no_nan_checkpoint(base, encoder, small_source, tmp_path):
    from iap.config import TrainConfig
    from iap.errors import IapError
    from iap.objective import Teacher, make_objective
    from iap.training.checkpoint import latest_checkpoint
    from iap.training.loop import train
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=2, log_every=5, lr=1e30, warmup_steps=0,
                      empty_prompt_fraction=0)
    with pytest.raises(IapError, match=r"training loss became (nan|inf) by step \d: .*learning rate \(1e\+30\)"):
        train(cfg, encoder, make_objective("pivot", Teacher(base)), small_source, tmp_path / "run", log=lambda _: None)
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_nan_metric_is_rejected_and_blocks_nothing(tmp_path):
    from iap.release.registry import Entry, Registry

    def entry(cid: str, loss: float) -> Entry:
        return Entry(checkpoint_id=cid, checkpoint_url=f"/runs/{cid}", base="base", base_fingerprint="b",
                     metrics={"heldout_loss": loss, "retrieval_top1": 0.9})
    reg = Registry(str(tmp_path / "reg"))
    nan = reg.register(entry("nan", float("nan")))
    assert nan.status == "rejected" and "heldout_loss=nan is not a finite number" in nan.reason
    assert reg.register(entry("good", 0.01)).status == "promoted"


def test_keys_never_become_paths(served, tmp_path):
    """Keys that climb out of --out or name absolute paths: every file the data stage writes stays under
    --out, and the keys reach the snapshot as plain text."""
    outside = tmp_path / "outside"
    good = pq.read_table(served).to_pylist()[:4]
    keys = ["../../outside/escape", f"{outside}/absolute", "..", "a/../../b"]
    manifest = tmp_path / "keys.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "key": k} for r, k in zip(good, keys, strict=True)]), manifest)
    out = tmp_path / "deep" / "er" / "out"
    before = {p for p in tmp_path.rglob("*")}
    _, snapshot = run_data(str(manifest), str(out), DOWNLOAD, FILTER.model_copy(update={"val_fraction": 0,
                                                                                       "test_fraction": 0}))
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == out or out in p.parents or p in out.parents for p in written), sorted(written)[:5]
    assert not outside.exists()
    kept = pq.read_table(f"{snapshot.url}/{snapshot.shards['train'][0]}")["key"].to_pylist()
    assert sorted(kept) == sorted(keys)


def test_a_redirect_off_http_is_refused(served):
    """A manifest's server answers 302 to ftp:// (urllib would follow it): the row fails, with the reason."""
    import http.server
    import threading

    from iap.data.fetch import fetch
    target = pq.read_table(served).to_pylist()[0]["url"]

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/secret.jpg" if self.path == "/off" else target)
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        key, body, error = fetch(("k", f"{base}/off"), 5, None, None)
        assert body is None and "redirect to a non-http(s) URL refused: ftp://" in error
        key, body, error = fetch(("k", f"{base}/on"), 5, None, None)  # http -> http still follows
        assert error is None and body.getvalue()[:2] in (b"\xff\xd8", b"\x89P")
    finally:
        server.shutdown()


def test_column_names_never_become_sql(tmp_path):
    """A manifest column named as crafted SQL once read a local file into the snapshot; names are data."""
    import hashlib

    from iap.data.snapshot import build_snapshot
    secret = tmp_path / "host-secret.txt"
    secret.write_text("AWS_SECRET_ACCESS_KEY=planted")
    crafted = f'a" AS "z", (SELECT content FROM read_text(\'{secret}\')) AS "leak'
    quoted = 'size "inches"'
    n = 3
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.table({
        "iap_key": [f"k{i}" for i in range(n)], "url": [f"http://x/{i}.jpg" for i in range(n)],
        "caption_zh": ["山间的小木屋", "湖边的小船", "草原上的马群"], "caption": ["a cabin in the hills", "a boat on a lake",
                                                                 "horses on the grassland"],
        "jpg": [b"\xff\xd8" + bytes([i]) for i in range(n)], "width": [64] * n, "height": [64] * n,
        "original_width": [512] * n, "original_height": [512] * n,
        "sha256": [hashlib.sha256(bytes([i])).hexdigest() for i in range(n)], "status": ["success"] * n,
        "error_message": pa.nulls(n, pa.string()), crafted: ["x", "y", "z"], quoted: ["12", "13", "14"]}),
        folder / "00000.parquet")
    snap = build_snapshot(str(folder), str(tmp_path / "out"), FILTER.model_copy(update={
        "val_fraction": 0, "test_fraction": 0, "split_key": quoted}))
    table = pq.read_table(f"{snap.url}/{snap.shards['train'][0]}")
    assert crafted in table.column_names and quoted in table.column_names and "leak" not in table.column_names
    assert sorted(table[crafted].to_pylist()) == ["x", "y", "z"] and sorted(table[quoted].to_pylist()) == ["12", "13", "14"]
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not any(b"planted" in p.read_bytes() for p in files)


def _entry(cid: str, loss: float, status: str = "", base: str = "b"):
    from iap.release.registry import Entry
    return Entry(checkpoint_id=cid, checkpoint_url=f"/runs/{cid}", base="base", base_fingerprint=base,
                 metrics={"heldout_loss": loss, "retrieval_top1": 0.9}, **({"status": status} if status else {}))


def test_a_stale_lock_broken_under_its_holder_is_never_released_by_it(tmp_path):
    """Holder A overruns the staleness limit; B breaks the lock and holds it. A may no longer write, and
    A's release leaves B's lock alone (before: A deleted it, and both promoted)."""
    import json
    import time

    from iap.errors import IapError
    from iap.release.registry import LOCK_STALE_S, Registry
    reg = Registry(str(tmp_path / "reg"))
    a = reg._decision("b")
    a_still_held = a.__enter__()
    lock = next((tmp_path / "reg" / "locks").glob("*.lock"))
    held = json.loads(lock.read_text())
    lock.write_text(json.dumps({**held, "at": time.time() - LOCK_STALE_S - 1}))  # A overran the limit
    b = reg._decision("b")
    b_still_held = b.__enter__()  # breaks A's lock, takes its own
    with pytest.raises(IapError, match="broken as stale"):
        a_still_held()
    a.__exit__(None, None, None)
    assert lock.exists() and json.loads(lock.read_text())["token"] != held["token"]  # B's lock stays
    b_still_held()
    b.__exit__(None, None, None)
    assert not lock.exists()


def test_on_s3_a_lock_is_released_and_broken_only_by_a_conditional_delete(s3):
    """The S3 form of finding 6: release and break delete the lock only while it holds what was read
    (DELETE If-Match on its ETag), so a successor's lock is never removed."""
    import json
    import time

    from iap.release.registry import LOCK_STALE_S, Registry
    from iap.system.storage import remove_if_unchanged
    reg = Registry("s3://iap-test/reg")
    a = reg._decision("b")
    a.__enter__()
    lock = s3.glob("iap-test/reg/locks/*.lock")[0]
    held = json.loads(s3.cat_file(lock))
    s3.pipe_file(lock, json.dumps({**held, "at": time.time() - LOCK_STALE_S - 1}).encode())
    b = reg._decision("b")
    b.__enter__()  # breaks A's lock, takes its own
    a.__exit__(None, None, None)
    s3.invalidate_cache()
    assert json.loads(s3.cat_file(lock))["token"] != held["token"]  # B's lock stays
    assert not remove_if_unchanged(f"s3://{lock}", b"something else", s3)
    b.__exit__(None, None, None)
    s3.invalidate_cache()
    assert not s3.exists(lock)


def test_a_full_disk_leaves_no_lock_that_wedges_the_registry(tmp_path, monkeypatch):
    import errno
    import hashlib
    import os
    import time

    from iap.release.registry import LOCK_STALE_S, Registry
    from iap.system import storage
    reg = Registry(str(tmp_path / "reg"))
    real_fdopen = os.fdopen

    def full_disk(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f
    monkeypatch.setattr(storage.os, "fdopen", full_disk)
    with pytest.raises(OSError, match="No space left"):
        reg.register(_entry("a", 0.1))
    monkeypatch.undo()
    assert not list((tmp_path / "reg" / "locks").glob("*.lock"))  # no empty lock behind
    # the empty lock an older version left on a full disk: unreadable, so judged by its age
    lock = tmp_path / "reg" / "locks" / f"{hashlib.sha256(b'b').hexdigest()[:16]}.lock"
    lock.write_bytes(b"")
    old = time.time() - LOCK_STALE_S - 5
    os.utime(lock, (old, old))
    assert reg.register(_entry("a", 0.1)).status == "promoted"  # at once, not after LOCK_WAIT_S


def test_two_promoted_entries_left_by_a_crash_are_repaired_by_the_next_decision(tmp_path):
    from iap.release.registry import Registry
    reg = Registry(str(tmp_path / "reg"))
    reg.register(_entry("a", 0.3))
    import time
    b = _entry("b", 0.2, status="promoted")
    b.registered_at = time.time()
    reg._write(b)  # a promoter killed after writing b, before demoting a
    reg.register(_entry("c", 0.5))  # a candidate: does not beat b
    promoted = [e.checkpoint_id for e in reg.entries() if e.status == "promoted"]
    assert promoted == ["b"] and "repaired" in reg.get("a").reason


def test_pruning_never_orphans_a_run(encoder, tmp_path, s3):
    """Finding 12: a checkpoint newer than `latest` (a killed run's, or a failed upload's, incomplete) made
    keep=1 delete the checkpoint `latest` names."""
    import torch

    from iap.training.checkpoint import (
        TrainState,
        latest_checkpoint,
        push_checkpoint,
        read_checkpoint_meta,
        save_checkpoint,
    )
    optimizer = torch.optim.AdamW([p for p in encoder.model.parameters() if p.requires_grad], lr=1e-4)

    def save(run, step):
        return save_checkpoint(run, encoder, optimizer, TrainState(step=step), {}, keep=1, lineage={})
    run = tmp_path / "run"
    save(run, 4)
    save(tmp_path / "killed", 6)
    (tmp_path / "killed" / "checkpoints" / "step-000006").rename(run / "checkpoints" / "step-000006")
    save(run, 5)  # resumed from 4 with another checkpoint_every
    assert read_checkpoint_meta(latest_checkpoint(run))["step"] == 5

    remote = "s3://iap-test/runs/r"
    push_checkpoint(run / "checkpoints" / "step-000005", remote, keep=1)
    s3.pipe_file(f"{remote}/checkpoints/step-000008/encoder/model.safetensors", b"half an upload")
    push_checkpoint(save(tmp_path / "resumed", 7), remote, keep=1)
    s3.invalidate_cache()
    assert s3.cat_file(f"{remote}/checkpoints/latest") == b"step-000007"
    assert read_checkpoint_meta(f"{remote}/checkpoints/step-000007")["step"] == 7
    assert not s3.exists(f"{remote}/checkpoints/step-000005")


def test_a_synthetic_manifest_passes_the_default_rules(tmp_path):
    """Finding 13: `iap train --synthetic N` with default options failed: the synthetic images (64 px) were
    below the default 128 px minimum, and the message blamed unreachable URLs."""
    from iap.data.download import DownloadConfig
    from iap.presets.synthetic import synthetic_manifest
    download = DownloadConfig(processes_count=1, thread_count=8)
    with synthetic_manifest(str(tmp_path), 24, download.min_image_size) as manifest:
        report, _ = run_data(manifest, str(tmp_path / "data"), download, FILTER)
    assert report.downloaded == 24 and report.failed == {}


def test_when_every_image_is_too_small_the_message_says_so(tmp_path):
    from iap.data.download import DownloadConfig
    from iap.errors import IapError
    from iap.presets.synthetic import synthetic_manifest
    with synthetic_manifest(str(tmp_path), 8) as manifest, pytest.raises(IapError, match=r"too_small removed 8 \(--download-min-image-size\)\. Nothing"):
        run_data(manifest, str(tmp_path / "data"), DownloadConfig(processes_count=1, thread_count=8), FILTER)


def test_presets_resolve_in_precompute(local_run, monkeypatch, capsys, tmp_path):
    """Finding 9: `iap precompute --base preset:tiny` said the folder does not exist."""
    import sys

    from iap.cli import main as cli
    monkeypatch.setenv("IAP_NO_REAPER", "1")
    _, _, snapshot = local_run
    monkeypatch.setattr(sys, "argv", ["iap", "precompute", "--snapshot", snapshot.url, "--base", "preset:tiny",
                                      "--out", str(tmp_path / "cache"), "--dry-run"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    assert exit_.value.code in (0, None), out.err
    assert "nothing was written" in out.out and not (tmp_path / "cache").exists()


def test_inputs_past_the_bounds_are_one_message_and_long_valid_lines_are_read(tmp_path):
    """Finding 9: a CSV of 100k columns ran for 15 minutes at 3 GB; a valid JSONL line over 1 MiB failed with
    'straddling object straddles two block boundaries'."""
    import json

    from iap.data.manifest import MAX_LINE_BYTES
    from iap.errors import IapError
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(["url", "caption_zh", "caption_en", *(f"c{i}" for i in range(100_000))]) + "\n"
                    + ",".join(["http://127.0.0.1/a.jpg", "红色的圆", "a red circle", *("x" * 100_000)]) + "\n")
    with pytest.raises(IapError, match="100,003 columns"):
        load_manifest(str(wide))
    wide_parquet = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": [1] for i in range(1500)}), wide_parquet)
    with pytest.raises(IapError, match="1,500 columns"):
        load_manifest(str(wide_parquet))

    row = {"url": "http://127.0.0.1/a.jpg", "caption_zh": "红色的圆", "caption_en": "a red circle"}
    long = tmp_path / "long.jsonl"
    long.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in
                              [row, {**row, "url": "http://127.0.0.1/b.jpg", "note": "x" * (3 << 20)}]) + "\n")
    assert load_manifest(str(long)).table.num_rows == 2
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps(row) + "\n" + json.dumps({**row, "note": "x" * MAX_LINE_BYTES}) + "\n")
    with pytest.raises(IapError, match="line 2 is"):
        load_manifest(str(huge))


def _limited_file_size(limit: int):
    """For a child process: files may grow to `limit` bytes, then writes fail with EFBIG (a full disk, in effect)."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.e2e
def test_a_full_disk_mid_training_is_one_message_and_leaves_nothing_partial(tiny_dir, tmp_path):
    """Finding 13: a full disk ended in a 70-line traceback (safetensors' I/O error)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 2,
                                            "warmup_steps": 1}}))
    run = tmp_path / "run"
    r = subprocess.run([str(Path(sys.executable).parent / "iap"), "train-worker", "--base", str(tiny_dir / "base"),
                        "--zh-encoder", str(tiny_dir / "zh_encoder"), "--out", str(run), "--config", str(config),
                        "--n-train", "32"], capture_output=True, text=True, timeout=600,
                       preexec_fn=_limited_file_size(200_000))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
    assert len(errors) == 1 and f"cannot write {run}/checkpoints/step-000002" in errors[0], r.stderr
    assert [p.name for p in run.rglob("*")] == ["checkpoints"]  # no staging folder, no temp file


def test_storage_faults_name_the_url_and_leave_no_temp_file(tmp_path, monkeypatch, s3):
    import errno
    import os

    from iap.errors import StorageError
    from iap.system import storage

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(storage.os, "fsync", full)
    target = tmp_path / "latest"
    with pytest.raises(StorageError, match=f"cannot write {target}: No space left"):
        storage.write_atomic(str(target), b"step-000002")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    s3.rm("iap-test", recursive=True)  # the bucket is gone under a running job
    with pytest.raises(StorageError, match="cannot write s3://iap-test/out"), \
            storage.staged_folder("s3://iap-test/out", "done.json") as folder:
        (folder / "done.json").write_text("{}")


@pytest.mark.e2e
def test_private_addresses_are_refused_when_asked(served, tmp_path):
    """The cloud-metadata risk: with refuse_private_addresses a row whose server is on a private, loopback
    or link-local address fails as private_address, checked on the connected socket (DNS rebinding cannot
    pass it); off by default, so local servers keep working."""
    from iap.data import fetch as fetching
    rows = pq.read_table(served).to_pylist()[:3]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    strict = DOWNLOAD.model_copy(update={"refuse_private_addresses": True})
    with pytest.raises(Exception, match=r"no manifest row was downloaded: private_address removed 3 "
                       r"\(--download-refuse-private-addresses\)"):
        run_data(str(manifest), str(tmp_path / "out"), strict, FILTER)
    report, _ = run_data(str(manifest), str(tmp_path / "ok"), DOWNLOAD, FILTER)
    assert report.downloaded == 3 and DOWNLOAD.identity() == DOWNLOAD.model_copy(
        update={"refuse_private_addresses": False}).identity()
    fetching._active = fetching.FetchLimits(5, 1 << 30, 1 << 30, public_only=True)  # as in a download worker
    try:
        _, body, error = fetching.fetch((1, rows[0]["url"]), 5, None, None)
        https = rows[0]["url"].replace("http://", "https://")  # refused after TCP connect, before TLS
        _, https_body, https_error = fetching.fetch((2, https), 5, None, None)
    finally:
        fetching._active = None
    assert body is None and "private address refused: 127.0.0.1" in error
    assert https_body is None and "private address refused: 127.0.0.1" in https_error

    class Peer:
        def __init__(self, ip):
            self.ip = ip

        def getpeername(self):
            return (self.ip, 80)

        def close(self):
            pass
    for ip in ("169.254.169.254", "10.1.2.3", "::1", "::ffff:192.168.0.1", "fe80::1%eth0"):
        with pytest.raises(ConnectionRefusedError):
            fetching._refuse_private_peer(Peer(ip), "h")
    fetching._refuse_private_peer(Peer("93.184.216.34"), "example.org")  # a public address passes
