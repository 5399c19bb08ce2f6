"""Pipeline-start checks: fail before any work, on what paths and configs alone can tell."""

from __future__ import annotations

from iap.errors import IapError
from iap.models.base import check_source, weights_fingerprint
from iap.models.compat import check_pair
from iap.presets.names import resolve
from iap.system.storage import check_reachable, local_workdir


def check_inputs(out: str, base: str, zh_encoder: str, manifest: str | None, snapshot: str | None,
                 synthetic: int) -> tuple[str, str, str]:
    """Resolve presets and check what configs alone can tell, before any data work: paths, the data source,
    the encoder's width against the UNet's (hub ids: config files only, at the pinned revision)."""
    if sum(x is not None and x != 0 for x in (manifest, snapshot, synthetic or None)) != 1:
        raise IapError("give exactly one data source: manifest, snapshot or synthetic (a row count)")
    check_reachable(out)
    if not base.startswith("preset:"):  # check user paths before writing anything
        check_source(base)
    base, zh_encoder = resolve(base, zh_encoder, local_workdir(out))  # presets are local files
    check_pair(base, zh_encoder)
    return base, zh_encoder, weights_fingerprint(base)
