"""Tasks of the data stage: download (img2dataset) and filter (DuckDB snapshot)."""

from __future__ import annotations

from prefect import task
from prefect.assets import materialize

from iap.data.download import DownloadConfig, DownloadReport, download
from iap.data.download import plan_download as plan
from iap.data.english import EnglishConfig, load_triples
from iap.data.manifest import ManifestColumns
from iap.data.pipeline import download_funnel, manifest_lineage
from iap.data.snapshot import FilterConfig, Snapshot, build_snapshot, plan_snapshot
from iap.system.profile import stage
from tasks import PERSIST, by_key, retrying

PLACEHOLDER_ASSET = "file:///iap/placeholder"  # replaced per call by with_options(assets=[...])


@materialize(PLACEHOLDER_ASSET, cache_key_fn=by_key, **retrying(2, 5), **PERSIST)
def download_shards(key: str, manifest: str, out: str, config: DownloadConfig, columns: ManifestColumns,
                    english: EnglishConfig = EnglishConfig()) -> DownloadReport:
    """img2dataset download; `key` is the download id. Call it directly (main thread), never .submit()."""
    with stage("download"):
        return download(load_triples(manifest, columns, english, out), out, config)


@task(**retrying(2, 5))
def plan_filter(report: DownloadReport, out: str, config: FilterConfig) -> dict:
    """The snapshot id and URL from the manifest rows' content and the rules (metadata scan only)."""
    snapshot_id, url = plan_snapshot(report.parts, out, config, report.keys_url)
    return {"id": snapshot_id, "url": url}


@materialize(PLACEHOLDER_ASSET, cache_key_fn=by_key, **retrying(2, 5), **PERSIST)
def filter_snapshot(key: str, report: DownloadReport, out: str, config: FilterConfig) -> Snapshot:
    """DuckDB filter into a snapshot; `key` is the snapshot id."""
    with stage("filter"):
        return build_snapshot(report.parts, out, config, download_funnel(report), report.keys_url,
                              manifest_lineage(report))


@task(**retrying(2, 5))
def plan_download(manifest: str, out: str, config: DownloadConfig, columns: ManifestColumns,
                  english: EnglishConfig = EnglishConfig()) -> dict:
    """The download id and URL from the manifest's content (cheap next to downloading; translations are
    cached, so the download task reuses them)."""
    download_id, raw_url = plan(load_triples(manifest, columns, english, out), out, config)
    return {"id": download_id, "raw_url": raw_url}
