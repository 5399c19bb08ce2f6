"""iap.system.storage.staged_folder: a folder output appears whole or not at all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iap.system.storage import staged_folder


def test_a_failed_build_leaves_the_previous_output_untouched(tmp_path):
    out = tmp_path / "snapshots" / "abc"
    with staged_folder(out, "done.json") as folder:
        (folder / "data").write_text("first")
        (folder / "done.json").write_text("{}")
    with pytest.raises(RuntimeError), staged_folder(out, "done.json") as folder:
        (folder / "data").write_text("half")
        raise RuntimeError("killed")
    assert (out / "data").read_text() == "first"
    assert [p.name for p in out.parent.iterdir()] == ["abc"]  # no staging folder left behind


def _stage_in_child(out, then: str) -> subprocess.Popen:
    """A process that opens a staging folder for `out` and then runs `then` (exit hard, or wait for stdin)."""
    code = (f"import os, sys\nfrom iap.system.storage import staged_folder\n"
            f"with staged_folder({str(out)!r}, 'state.json') as tmp:\n"
            f"    (tmp / 'state.json').write_text('{{}}')\n    print('staged', flush=True)\n    {then}\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "staged"
    return child


def test_a_killed_process_s_staging_folder_is_removed_by_the_next_build(tmp_path):
    out = tmp_path / "pipeline"
    killed = _stage_in_child(out, "os._exit(9)")  # no cleanup runs, as with kill -9
    killed.wait()
    assert any(p.name.startswith(".pipeline.tmp-") for p in tmp_path.iterdir())
    with staged_folder(out, "model_index.json") as folder:
        (folder / "model_index.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json"]  # the owner file is not committed


def test_a_reader_never_removes_a_live_writer_s_checkpoint(tmp_path):
    """Issue 30 finding 8: a reader deleted a save in progress; now neither a reader nor another writer
    touches a stage whose owner is alive."""
    from iap.training.checkpoint import latest_checkpoint
    run = tmp_path / "run"
    writer = _stage_in_child(run / "checkpoints" / "step-000002", "sys.stdin.readline()")
    try:
        assert latest_checkpoint(run) is None
        with staged_folder(run / "checkpoints" / "step-000004", "state.json") as other:
            (other / "state.json").write_text("{}")
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_a_stage_owned_elsewhere_is_kept_until_it_is_older_than_any_build(tmp_path):
    import json
    import os
    import time

    from iap.system.storage import ABANDONED_AFTER_S, OWNER_FILE, remove_abandoned_stages
    foreign, ownerless = tmp_path / ".a.tmp-1-1", tmp_path / ".b.tmp-2-2"
    foreign.mkdir()
    (foreign / OWNER_FILE).write_text(json.dumps({"host": "another-node", "boot": "x", "pid": 1, "started": 0}))
    ownerless.mkdir()
    remove_abandoned_stages(tmp_path)
    assert foreign.exists() and ownerless.exists()  # pid 1 is alive here, but it is not that host's pid 1
    old = time.time() - ABANDONED_AFTER_S - 60
    os.utime(foreign / OWNER_FILE, (old, old))
    os.utime(ownerless, (old, old))
    remove_abandoned_stages(tmp_path)
    assert not foreign.exists() and not ownerless.exists()


def test_a_remote_output_replaces_the_old_one_whole(s3):
    import fsspec
    url = "s3://iap-test/staged/out"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.pipe_file(f"{url}/stale.bin", b"old")
    with staged_folder(url, "marker.json") as folder:
        (folder / "a.bin").write_bytes(b"a")
        (folder / "marker.json").write_text("{}")
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(url)) == ["a.bin", "marker.json"]
