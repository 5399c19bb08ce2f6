"""The pipeline-start checks as a task (user errors: never retried)."""

from __future__ import annotations

from prefect import task

from iap.pipeline import preflight


@task
def check_inputs(out: str, base: str, zh_encoder: str, manifest: str | None, snapshot: str | None,
                 synthetic: int) -> tuple[str, str, str]:
    """iap.pipeline.preflight.check_inputs: (base, zh_encoder) resolved, and the base's weights fingerprint."""
    return preflight.check_inputs(out, base, zh_encoder, manifest, snapshot, synthetic)
