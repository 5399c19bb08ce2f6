"""iap-train: the full pipeline. data -> precompute -> train -> evaluate -> export -> register."""

from __future__ import annotations

from prefect import flow, runtime

from flows import subflow
from flows.data import iap_data
from flows.evaluate import iap_evaluate
from flows.precompute import iap_precompute
from iap.cache.info import CacheConfig
from iap.config import SD15, ZH_768, TrainConfig
from iap.data.download import DownloadConfig
from iap.data.english import EnglishConfig
from iap.data.manifest import ManifestColumns
from iap.data.snapshot import FilterConfig
from iap.evaluation.heldout import EvalConfig
from iap.pipeline.stages import Trained, pipeline_result, registry_entry, run_key, run_lineage
from iap.presets.synthetic import synthetic_manifest
from iap.release.export import card_dataset
from iap.release.registry import GateConfig
from iap.training.tracking import log_evaluation
from tasks import asset_url
from tasks.artifacts import publish_run
from tasks.evaluate import export, push, register
from tasks.inputs import check_inputs
from tasks.train import train_encoder


@flow(name="iap-train", log_prints=True)
def iap_train(
    out: str, base: str = SD15, zh_encoder: str = ZH_768, manifest: str | None = None,
    snapshot: str | None = None, synthetic: int = 0, registry: str | None = None,
    download: DownloadConfig = DownloadConfig(), filter: FilterConfig = FilterConfig(),  # noqa: A002
    cache: CacheConfig = CacheConfig(), train: TrainConfig = TrainConfig(), gate: GateConfig = GateConfig(),
    columns: ManifestColumns = ManifestColumns(), evaluate: EvalConfig = EvalConfig(),
    english: EnglishConfig = EnglishConfig(), push_to_hub: str | None = None,
) -> dict:
    base, zh_encoder, fingerprint = check_inputs(out, base, zh_encoder, manifest, snapshot, synthetic)
    runs = {"iap-train": str(runtime.flow_run.id), "iap-data": None}
    if snapshot is None:
        with synthetic_manifest(out, synthetic, download.min_image_size) as synth:
            data, runs["iap-data"] = subflow(iap_data, synth or manifest, f"{out}/data", download, filter, columns,
                                             english)
        snapshot = data["url"]
    info, runs["iap-precompute"] = subflow(iap_precompute, snapshot, base, f"{out}/cache", cache,
                                           train.mixed_precision)
    key = run_key(info["key"], zh_encoder, train)
    run_dir = f"{out}/runs/{key}"
    lineage = run_lineage(base, fingerprint, info, snapshot, zh_encoder, runs["iap-train"])
    trained = train_encoder.with_options(assets=[asset_url(run_dir)], asset_deps=[asset_url(info["url"])])(
        f"train-{key}-{train.steps}", info["url"], base, zh_encoder, run_dir, train, lineage)
    metrics, runs["iap-evaluate"] = subflow(iap_evaluate, trained["checkpoint"], snapshot, base, untrained=zh_encoder,
                                            generation=evaluate, precision=train.mixed_precision, report="report")
    log_evaluation(train.report_to, run_dir, metrics, trained["steps"])
    pipeline_dir = f"{out}/pipelines/{trained['checkpoint_id']}"
    pipeline = export.with_options(assets=[asset_url(pipeline_dir)], asset_deps=[asset_url(run_dir)])(
        f"export-{trained['checkpoint_id']}", trained["checkpoint"], base, pipeline_dir, metrics, card_dataset(snapshot))
    registry = registry or f"{out}/registry"
    entry = register.with_options(assets=[asset_url(f"{registry}/entries/{trained['checkpoint_id']}.json")],
                                  asset_deps=[asset_url(pipeline_dir)])(
        registry, registry_entry(trained, base, lineage, metrics, pipeline, train), gate)
    result = pipeline_result(base=base, manifest=manifest, synthetic=synthetic, snapshot=snapshot,
                             cache_url=info["url"], run_dir=run_dir, trained=Trained(**trained), metrics=metrics,
                             pipeline_dir=pipeline, registry=registry, entry=entry, runs=runs, train_cfg=train)
    if push_to_hub:
        result["hub"] = push(push_to_hub, pipeline, entry["status"])
    return result | publish_run(result, info["key"])


if __name__ == "__main__":
    import sys
    iap_train(out=sys.argv[1], base="preset:tiny", zh_encoder="preset:tiny", synthetic=600,
              filter=FilterConfig(split_key="combo", val_fraction=0.15, test_fraction=0.0),
              train=TrainConfig(steps=60, batch_size=16, lr=2e-3, warmup_steps=10))
