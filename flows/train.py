"""iap-train: the full pipeline. data -> precompute -> train -> evaluate -> export -> register."""

from __future__ import annotations

import hashlib

from prefect import flow, runtime

from flows import subflow
from flows.data import iap_data
from flows.evaluate import iap_evaluate
from flows.precompute import iap_precompute
from iap.cache import CacheConfig
from iap.config import TrainConfig
from iap.data.download import DownloadConfig
from iap.data.english import EnglishConfig
from iap.data.manifest import ManifestColumns
from iap.data.snapshot import FilterConfig
from iap.evaluate import EvalConfig
from iap.registry import GateConfig
from tasks import asset_url
from tasks.artifacts import publish_run
from tasks.evaluate import export, register
from tasks.inputs import check_inputs, synthetic_manifest
from tasks.train import train_encoder

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ZH_768 = "hfl/chinese-roberta-wwm-ext"


@flow(name="iap-train", log_prints=True)
def iap_train(
    out: str, base: str = SD15, zh_encoder: str = ZH_768, manifest: str | None = None,
    snapshot: str | None = None, synthetic: int = 0, registry: str | None = None,
    download: DownloadConfig = DownloadConfig(), filter: FilterConfig = FilterConfig(),  # noqa: A002
    cache: CacheConfig = CacheConfig(), train: TrainConfig = TrainConfig(), gate: GateConfig = GateConfig(),
    columns: ManifestColumns = ManifestColumns(), evaluate: EvalConfig = EvalConfig(),
    english: EnglishConfig = EnglishConfig(),
) -> dict:
    base, zh_encoder, fingerprint = check_inputs(out, base, zh_encoder, manifest, snapshot, synthetic)
    runs = {"iap-train": str(runtime.flow_run.id), "iap-data": None}
    if snapshot is None:
        with synthetic_manifest(out, synthetic) as synth:
            data, runs["iap-data"] = subflow(iap_data, synth or manifest, f"{out}/data", download, filter, columns,
                                             english)
        snapshot = data["url"]
    info, runs["iap-precompute"] = subflow(iap_precompute, snapshot, base, f"{out}/cache", cache,
                                           train.mixed_precision)
    run_key = hashlib.sha256(f"{info['key']}:{zh_encoder}:{train.identity()}".encode()).hexdigest()[:16]
    run_dir = f"{out}/runs/{run_key}"
    lineage = {"base": base, "base_fingerprint": fingerprint, "snapshot_id": info["snapshot_id"],
               "snapshot_url": snapshot, "cache_key": info["key"], "cache_url": info["url"],
               "zh_encoder": zh_encoder, "flow_run_id": runs["iap-train"]}
    trained = train_encoder.with_options(assets=[asset_url(run_dir)], asset_deps=[asset_url(info["url"])])(
        f"train-{run_key}-{train.steps}", info["url"], base, zh_encoder, run_dir, train, lineage)
    metrics, runs["iap-evaluate"] = subflow(iap_evaluate, trained["checkpoint"], snapshot, base, untrained=zh_encoder,
                                            generation=evaluate, precision=train.mixed_precision)
    pipeline_dir = f"{out}/pipelines/{trained['checkpoint_id']}"
    pipeline = export.with_options(assets=[asset_url(pipeline_dir)], asset_deps=[asset_url(run_dir)])(
        f"export-{trained['checkpoint_id']}", trained["checkpoint"], base, pipeline_dir)
    registry = registry or f"{out}/registry"
    entry = register.with_options(assets=[asset_url(f"{registry}/entries/{trained['checkpoint_id']}.json")],
                                  asset_deps=[asset_url(pipeline_dir)])(
        registry, {"checkpoint_id": trained["checkpoint_id"], "checkpoint_url": trained["checkpoint"],
                   "base": base, "base_fingerprint": fingerprint, "metrics": metrics, "pipeline_url": pipeline,
                   "lineage": lineage | {"train_config": train.model_dump(mode="json")}}, gate)
    result = {"base": base, "manifest": manifest or (f"synthetic: {synthetic} shapes-world rows" if synthetic else None),
              "snapshot": snapshot, "cache": info["url"], "run_dir": run_dir, "checkpoint": trained["checkpoint"],
              "checkpoint_id": trained["checkpoint_id"], "pipeline_dir": pipeline, "metrics": metrics,
              "train": {k: trained[k] for k in ("steps", "seconds", "samples_per_second", "losses")},
              "registry": registry, "status": entry["status"], "reason": entry["reason"],
              "loss_curve": trained["loss_curve"], "flow_run_id": runs["iap-train"], "flow_runs": runs,
              "train_config": train.model_dump(mode="json")}
    return result | publish_run(result, lineage)


if __name__ == "__main__":
    import sys
    iap_train(out=sys.argv[1], base="preset:tiny", zh_encoder="preset:tiny", synthetic=600,
              filter=FilterConfig(split_key="combo", val_fraction=0.15, test_fraction=0.0),
              train=TrainConfig(steps=60, batch_size=16, lr=2e-3, warmup_steps=10))
