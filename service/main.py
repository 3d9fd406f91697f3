"""Builds the FastAPI app. Start-up applies the migrations, then serves."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from nst.config import get_settings
from service.api import errors
from service.api.browsers import BrowserGuards
from service.api.main import api_router
from service.core.migrate import upgrade_head
from service.metrics import RequestMetrics, metrics_registry
from service.ui import install as install_ui


@asynccontextmanager
async def _lifespan(_app: FastAPI):
    get_settings().ensure_dirs()
    upgrade_head()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="nst",
        summary="Noisy Student pseudo-label service: datasets, teachers, labeling jobs.",
        version="0.1.0",
        lifespan=_lifespan,
        docs_url=None,  # service/ui serves /docs from local files
        redoc_url=None,
    )
    app.state.metrics = metrics_registry()
    app.add_middleware(RequestMetrics, registry=app.state.metrics)
    settings = get_settings()
    app.add_middleware(BrowserGuards, allowed_hosts=settings.allowed_hosts)
    errors.install(app, body_bytes=settings.max_body_bytes, upload_bytes=settings.max_upload_bytes)
    app.include_router(api_router)
    install_ui(app)
    return app


app = create_app()
