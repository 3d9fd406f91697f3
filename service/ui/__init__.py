"""The web UI under /ui: Jinja2 page shells and plain-JavaScript modules that read the public
REST API with the user's token, so a page shows nothing a script could not fetch itself; and the
API's Swagger page at /docs, from local files."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

import fastapi_offline
from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from nst.config import get_settings
from nst.states import ShardState

HERE = FilePath(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)
docs_router = APIRouter(include_in_schema=False)
# Swagger UI 5 (the first to read OpenAPI 3.1, which FastAPI writes), as fastapi-offline ships it
SWAGGER_UI = FilePath(fastapi_offline.__file__).parent / "static"


def _page(request: Request, template: str, **context) -> HTMLResponse:
    # The shells hold no data; the token only decides whether to ask for it before any call.
    auth_required = get_settings().api_token is not None
    return templates.TemplateResponse(request, template, {"auth_required": auth_required, **context})


@router.get("")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    return _page(request, "overview.html", page="overview")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_labels(request: Request, job_id: int) -> HTMLResponse:
    return _page(request, "job.html", page="job", job_id=job_id, shard_states=[s.value for s in ShardState])


@router.get("/manifests/{manifest_id}", response_class=HTMLResponse)
def manifest(request: Request, manifest_id: Annotated[str, Path(pattern="^[0-9a-f]{1,64}$")]) -> HTMLResponse:
    return _page(request, "manifest.html", page="manifest", manifest_id=manifest_id)


@router.get("/generations", response_class=HTMLResponse)
def generations(request: Request) -> HTMLResponse:
    return _page(request, "generations.html", page="generations")


@docs_router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "docs.html", {})


def install(app: FastAPI) -> None:
    """The UI and the docs page; the app is built with FastAPI's own /docs and /redoc off (they
    load Swagger's and ReDoc's scripts from a CDN)."""
    app.include_router(router)
    app.include_router(docs_router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.mount("/docs/static", StaticFiles(directory=SWAGGER_UI), name="docs-static")
