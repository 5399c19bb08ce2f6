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
from tests.conftest import DOWNLOAD, FILTER, free_port


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
