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
from iap.evaluation.config import EvalConfig
from iap.pipeline.request import PipelineRequest, PipelineResult, StageConfigs
from iap.pipeline.stages import pipeline_result, registry_entry, run_key, run_lineage
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
) -> PipelineResult:
    """Flat parameters for the Prefect UI's form; the pipeline itself reads one request and its sections."""
    return _pipeline(PipelineRequest(out=out, base=base, zh_encoder=zh_encoder, manifest=manifest, snapshot=snapshot,
                                     synthetic=synthetic, registry=registry, push_to_hub=push_to_hub),
                     StageConfigs(download=download, filter=filter, cache=cache, train=train, gate=gate,
                                  columns=columns, evaluate=evaluate, english=english))


def _pipeline(r: PipelineRequest, c: StageConfigs) -> PipelineResult:
    base, zh_encoder, fingerprint = check_inputs(r.out, r.base, r.zh_encoder, r.manifest, r.snapshot, r.synthetic)
    runs = {"iap-train": str(runtime.flow_run.id), "iap-data": None}
    snapshot = r.snapshot
    if snapshot is None:
        with synthetic_manifest(r.out, r.synthetic, c.download.min_image_size) as synth:
            data, runs["iap-data"] = subflow(iap_data, synth or r.manifest, f"{r.out}/data", c.download, c.filter,
                                             c.columns, c.english)
        snapshot = data.url
    info, runs["iap-precompute"] = subflow(iap_precompute, snapshot, base, f"{r.out}/cache", c.cache,
                                           c.train.mixed_precision)
    key = run_key(info.key, zh_encoder, c.train)
    run_dir = f"{r.out}/runs/{key}"
    lineage = run_lineage(base, fingerprint, info, snapshot, zh_encoder, runs["iap-train"])
    trained = train_encoder.with_options(assets=[asset_url(run_dir)], asset_deps=[asset_url(info.url)])(
        f"train-{key}-{c.train.steps}", info.url, base, zh_encoder, run_dir, c.train, lineage)
    metrics, runs["iap-evaluate"] = subflow(iap_evaluate, trained.checkpoint, snapshot, base, untrained=zh_encoder,
                                            generation=c.evaluate, precision=c.train.mixed_precision, report="report")
    log_evaluation(c.train.report_to, run_dir, metrics.flat(), trained.steps)
    pipeline_dir = f"{r.out}/pipelines/{trained.checkpoint_id}"
    pipeline = export.with_options(assets=[asset_url(pipeline_dir)], asset_deps=[asset_url(run_dir)])(
        f"export-{trained.checkpoint_id}", trained.checkpoint, base, pipeline_dir, metrics, card_dataset(snapshot))
    registry = r.registry or f"{r.out}/registry"
    entry = register.with_options(assets=[asset_url(f"{registry}/entries/{trained.checkpoint_id}.json")],
                                  asset_deps=[asset_url(pipeline_dir)])(
        registry, registry_entry(trained, base, lineage, metrics, pipeline, c.train), c.gate)
    result = pipeline_result(r.model_copy(update={"base": base}), snapshot, info, run_dir, trained, metrics,
                             pipeline, registry, entry, runs, c.train)
    if r.push_to_hub:
        result = result.model_copy(update={"hub": push(r.push_to_hub, pipeline, entry.status)})
    publish_run(result)
    return result


if __name__ == "__main__":
    import sys
    iap_train(out=sys.argv[1], base="preset:tiny", zh_encoder="preset:tiny", synthetic=600,
              filter=FilterConfig(split_key="combo", val_fraction=0.15, test_fraction=0.0),
              train=TrainConfig(steps=60, batch_size=16, lr=2e-3, warmup_steps=10))
