"""The data stage in one call: manifest -> img2dataset shards -> DuckDB-filtered snapshot."""

from __future__ import annotations

from collections.abc import Callable

from iap.data.download import DownloadConfig, DownloadPlan, DownloadReport, download, dry_run
from iap.data.english import EnglishConfig, complete_english, load_triples
from iap.data.manifest import Manifest, ManifestColumns, load_manifest
from iap.data.snapshot import FilterConfig, Snapshot, build_snapshot


def download_funnel(report: DownloadReport) -> list[dict]:
    """The manifest's and the download's part of the funnel: rows in the files, each reason a row was
    skipped (duplicates, unreadable lines), then each download failure reason."""
    return _funnel(report.manifest_rows or report.input_rows, ("manifest", report.skipped), ("download", report.failed))


def _funnel(rows: int, *stages: tuple[str, dict[str, int]], examples: dict[str, str] | None = None) -> list[dict]:
    """Rows in, then each stage's reasons in name order with what remains after each."""
    funnel, remaining = [{"stage": "manifest", "rule": "input", "removed": 0, "remaining": rows}], rows
    for stage, removed in stages:
        for reason, n in sorted(removed.items()):
            remaining -= n
            funnel.append({"stage": stage, "rule": reason, "removed": n, "remaining": remaining})
    if examples is not None:
        for f in funnel:
            f["examples"] = [examples[f["rule"]]] if f["rule"] in examples else []
    return funnel


def manifest_lineage(report: DownloadReport) -> dict:
    """What the snapshot records about its manifest: the download id and where English came from."""
    return {"download_id": report.download_id, "manifest_fingerprint": report.manifest_fingerprint,
            **({"english": report.english} if report.english else {})}


def run_data(manifest_url: str, out_url: str, download_cfg: DownloadConfig | None = None,
             filter_cfg: FilterConfig | None = None, columns: ManifestColumns | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             english: EnglishConfig | None = None) -> tuple[DownloadReport, Snapshot]:
    """Must run in the main thread of a `__main__`-guarded program (img2dataset spawns processes)."""
    manifest = load_triples(manifest_url, columns, english, out_url)
    report = download(manifest, out_url, download_cfg, on_progress)
    snapshot = build_snapshot(report.parts, out_url, filter_cfg, download_funnel(report), report.keys_url,
                              manifest_lineage(report))
    return report, snapshot


def plan_data(manifest_url: str, out_url: str, download_cfg: DownloadConfig | None = None,
              columns: ManifestColumns | None = None, english: EnglishConfig | None = None
              ) -> tuple[Manifest, DownloadPlan]:
    """Read and account the whole manifest, and say what its download would fetch; nothing is downloaded,
    translated or written under OUT (a check of a large manifest before a day of downloading)."""
    english = english or EnglishConfig()
    manifest = load_manifest(manifest_url, columns, require_english=not english.active)
    if english.active:
        manifest = complete_english(manifest, english, out_url, dry_run=True)
    return manifest, dry_run(manifest, out_url, download_cfg or DownloadConfig())


def manifest_funnel(manifest: Manifest) -> list[dict]:
    """The manifest's part of the funnel: rows in the files, then each reason a row was skipped."""
    return _funnel(manifest.input_rows, ("manifest", manifest.skipped), examples=manifest.examples)
