"""iap.storage.staged_folder: a folder output appears whole or not at all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iap.storage import staged_folder


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


def test_a_killed_process_s_staging_folder_is_removed_by_the_next_build(tmp_path):
    out = tmp_path / "pipeline"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".pipeline.tmp-{dead.stdout.strip()}-1"
    leftover.mkdir()
    with staged_folder(out, "model_index.json") as folder:
        (folder / "model_index.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


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
