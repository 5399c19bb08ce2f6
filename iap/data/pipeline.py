"""The data stage in one call: manifest -> img2dataset shards -> DuckDB-filtered snapshot."""

from __future__ import annotations

from collections.abc import Callable

from iap.data.download import DownloadConfig, DownloadReport, download
from iap.data.manifest import ManifestColumns, read_manifest
from iap.data.snapshot import FilterConfig, Snapshot, build_snapshot


def download_funnel(report: DownloadReport) -> list[dict]:
    """The download's part of the funnel: input rows, then each failure reason."""
    funnel = [{"stage": "manifest", "rule": "input", "removed": 0, "remaining": report.input_rows}]
    remaining = report.input_rows
    for reason, n in sorted(report.failed.items()):
        remaining -= n
        funnel.append({"stage": "download", "rule": reason, "removed": n, "remaining": remaining})
    return funnel


def run_data(manifest_url: str, out_url: str, download_cfg: DownloadConfig | None = None,
             filter_cfg: FilterConfig | None = None, columns: ManifestColumns | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> tuple[DownloadReport, Snapshot]:
    """Must run in the main thread of a `__main__`-guarded program (img2dataset spawns processes)."""
    manifest = read_manifest(manifest_url, columns)
    report = download(manifest, out_url, download_cfg, on_progress)
    snapshot = build_snapshot(report.parts, out_url, filter_cfg, download_funnel(report), report.keys_url)
    return report, snapshot
