"""``GET /metrics``: Prometheus text format (freight/observe/metrics.py declares every series)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from freight.api.openai_files import _runtime
from freight.observe.metrics import registry

router = APIRouter()


def _registry(request: Request) -> CollectorRegistry:
    reg: CollectorRegistry | None = getattr(request.app.state, "metrics_registry", None)
    if reg is None:
        runtime = _runtime(request)
        reg = registry(runtime.store, runtime.meter, runtime.settings.metrics_project_label,
                       [m.id for m in runtime.catalog.models()], runtime.cost.prices, runtime.clock.now)
        request.app.state.metrics_registry = reg
    return reg


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, _registry(request))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
