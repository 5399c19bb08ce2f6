"""iap-data: manifest -> img2dataset shards -> DuckDB-filtered snapshot."""

from __future__ import annotations

from prefect import flow

from iap.data.download import DownloadConfig
from iap.data.english import EnglishConfig
from iap.data.manifest import ManifestColumns
from iap.data.snapshot import FilterConfig, Snapshot
from tasks import artifacts, asset_url
from tasks.data import download_shards, filter_snapshot, plan_download, plan_filter


@flow(name="iap-data", log_prints=True)
def iap_data(manifest: str, out: str, download: DownloadConfig = DownloadConfig(),
             filter: FilterConfig = FilterConfig(), columns: ManifestColumns = ManifestColumns(),  # noqa: A002
             english: EnglishConfig = EnglishConfig()) -> Snapshot:
    planned = plan_download(manifest, out, download, columns, english)
    # img2dataset must run in this (main) thread: call the task, never .submit() it
    report = download_shards.with_options(assets=[asset_url(planned["raw_url"])], asset_deps=[asset_url(manifest)])(
        planned["id"], manifest, out, download, columns, english)
    planned_snapshot = plan_filter(report, out, filter)
    snapshot = filter_snapshot.with_options(assets=[asset_url(planned_snapshot["url"])],
                                            asset_deps=[asset_url(planned["raw_url"])])(
        planned_snapshot["id"], report, out, filter)
    artifacts.funnel(snapshot.funnel, snapshot.id)
    return snapshot


if __name__ == "__main__":
    import sys
    iap_data(sys.argv[1], sys.argv[2])
