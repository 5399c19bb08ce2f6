"""Prefect flows: iap-data, iap-precompute, iap-train (the full pipeline), iap-evaluate."""

from __future__ import annotations

from typing import Any


def subflow(flow_fn, *args, **kwargs) -> tuple[Any, str]:
    """Run a flow as a subflow: (its result, its flow run id), the id for lineage links. A failure raises
    the subflow's own exception."""
    state = flow_fn(*args, return_state=True, **kwargs)
    return state.result(), str(state.state_details.flow_run_id)


def _quiet() -> None:
    """A deployment's flow run is the program here, as `iap` is on the command line: the same quiet defaults,
    before the flows' modules load transformers and diffusers."""
    from iap.quiet import quiet_libraries
    quiet_libraries()


_quiet()
