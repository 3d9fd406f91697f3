from fastapi import APIRouter, Depends

from service.api.deps import require_token
from service.api.routes import (
    browse,
    compare,
    datasets,
    health,
    items,
    jobs,
    manifests,
    metrics,
    stats,
    teachers,
)

api_router = APIRouter()
api_router.include_router(health.router)

protected = APIRouter(dependencies=[Depends(require_token)])
for module in (datasets, teachers, jobs, stats, manifests, items, browse, compare, metrics):
    protected.include_router(module.router)
api_router.include_router(protected)
