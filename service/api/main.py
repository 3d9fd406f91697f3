from fastapi import APIRouter, Depends

from service.api.deps import require_token
from service.api.errors import responses
from service.api.routes import (
    browse,
    compare,
    datasets,
    health,
    items,
    jobs,
    manifests,
    metrics,
    quality,
    stats,
    teachers,
    workers,
)

api_router = APIRouter()
api_router.include_router(health.router)

protected = APIRouter(dependencies=[Depends(require_token)], responses=responses(401, 422))
for module in (datasets, teachers, jobs, workers, stats, quality, manifests, items, browse, compare, metrics):
    protected.include_router(module.router)
api_router.include_router(protected)
