"""Prefect flows: iap-data, iap-precompute, iap-train (the full pipeline), iap-evaluate."""

from __future__ import annotations

import os
from typing import Any

# Prefect reads its settings once, when first imported (here, by the log handler below): defaults set later
# are ignored. Its 20 s for the ephemeral API to start is too short on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def subflow(flow_fn, *args, **kwargs) -> tuple[Any, str]:
    """Run a flow as a subflow: (its result, its flow run id), the id for lineage links. A failure raises
    the subflow's own exception."""
    state = flow_fn(*args, return_state=True, **kwargs)
    return state.result(), str(state.state_details.flow_run_id)


def _quiet() -> None:
    """A deployment's flow run is the program here, as `iap` is on the command line: the same quiet defaults,
    before the flows' modules load transformers and diffusers."""
    from iap.system.quiet import quiet_libraries
    quiet_libraries()


def _library_logs_to_prefect() -> None:
    """The library logs to `logging.getLogger("iap...")`; inside a flow or task run those records also go to
    the run's logs in the Prefect API (what the UI shows), as PREFECT_LOGGING_EXTRA_LOGGERS=iap would do, but
    without a warning for every record logged outside a run."""
    import logging

    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging.handlers import APILogHandler
    library = logging.getLogger("iap")
    if not any(isinstance(h, APILogHandler) for h in library.handlers):
        handler = APILogHandler()
        handler.addFilter(lambda _record: FlowRunContext.get() is not None or TaskRunContext.get() is not None)
        library.addHandler(handler)
    if library.level == logging.NOTSET or library.level > logging.INFO:
        library.setLevel(logging.INFO)


_quiet()
_library_logs_to_prefect()
