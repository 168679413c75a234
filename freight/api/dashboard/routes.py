"""The dashboard's routes under ``/dashboard`` (docs/dashboard.md): pages rendered on the server, the
JSON their script polls, downloads and cancel. Every read and change goes through the services the
API uses (BatchService, MessageBatchService, FileService, services/results.py, services/watch.py)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from freight.api import openai_batches, openai_files
from freight.api.dashboard import auth, views
from freight.api.errors import error_response
from freight.domain.batches import Batch
from freight.domain.errors import NotFound
from freight.domain.message_batches import batch_id_of
from freight.runtime import Runtime

router = APIRouter(prefix=auth.PREFIX, include_in_schema=False)
_templates = Environment(loader=PackageLoader("freight.api.dashboard", "templates"),
                         autoescape=select_autoescape(default=True, default_for_string=True))
_failures = views.FailureCache()
STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
#: Scripts and styles from this server only, no inline script, no framing (a Cancel button in
#: another site's frame would be a click away from being pressed).
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    rt = _runtime(request)
    html = _templates.get_template(template).render(
        csrf=auth.csrf_token(request), signed_in=auth.cookie_key(request) is not None and rt.keys.required(),
        poll_ms=int(views.POLL_S * 1000), **context)
    return _secure(HTMLResponse(html, status_code=status))


def _json(data: Any, status: int = 200) -> Response:
    return _secure(JSONResponse(data, status_code=status))


def _to_login() -> Response:
    return _secure(RedirectResponse(auth.PREFIX + "/login", status_code=303))


def _not_signed_in() -> Response:
    return _secure(error_response(401, "Sign in at /dashboard/login with an API key.", "authentication_error",
                                  code="invalid_api_key"))


def _batch(rt: Runtime, project: str, batch_id: str) -> Batch:
    """A batch of this project by ``batch_…`` or ``msgbatch_…`` id (NotFound for any other)."""
    return rt.batches.get(project, batch_id_of(batch_id) or batch_id)


# ---- sign in and out -------------------------------------------------------------------------

@router.get("/login")
async def login_form(request: Request) -> Response:
    if not await run_in_threadpool(_runtime(request).keys.required):
        return _secure(RedirectResponse(auth.PREFIX, status_code=303))
    return _page(request, "login.html", error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    rt = _runtime(request)
    if not auth.same_origin(request):
        return _page(request, "login.html", 403, error="This sign-in came from another site; it was refused.")
    form = await request.form()
    key = form.get("key")
    key = key.strip() if isinstance(key, str) else ""
    project = await run_in_threadpool(rt.keys.authenticate, key) if key else None
    if project is None:
        return _page(request, "login.html", 401, error="That key is not valid (or it was revoked).")
    response = RedirectResponse(auth.PREFIX, status_code=303)
    response.set_cookie(auth.COOKIE, key, httponly=True, samesite="strict", path=auth.PREFIX,
                        secure=request.url.scheme == "https")
    return _secure(response)


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await request.form()
    field = form.get("csrf")
    if not auth.csrf_ok(request, field if isinstance(field, str) else None):
        return _json({"error": {"message": "Missing or wrong X-Freight-CSRF header.", "type": "permission_error",
                                "param": None, "code": "csrf"}}, 403)
    response = RedirectResponse(auth.PREFIX + "/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path=auth.PREFIX, httponly=True, samesite="strict")
    return _secure(response)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return _secure(error_response(404, "Unknown request URL. Please check the URL and method."))
    data = resources.files("freight.api.dashboard").joinpath("static").joinpath(name).read_bytes()
    response = Response(data, media_type=STATIC[name])
    response.headers.update(SECURITY_HEADERS)
    response.headers["cache-control"] = "no-cache"
    return response


# ---- pages -----------------------------------------------------------------------------------

@router.get("")
async def index_page(request: Request) -> Response:
    project = auth.project(request)
    if project is None:
        return _to_login()
    data = await run_in_threadpool(views.index, _runtime(request), project)
    return _page(request, "index.html", **data)


@router.get("/batches/{batch_id}")
async def batch_page(request: Request, batch_id: str) -> Response:
    project = auth.project(request)
    if project is None:
        return _to_login()
    rt = _runtime(request)
    try:
        data = await run_in_threadpool(lambda: views.detail(rt, _batch(rt, project, batch_id), _failures))
    except NotFound:
        return _page(request, "not_found.html", 404, batch_id=batch_id, project=project)
    return _page(request, "batch.html", project=project, **data)


# ---- what the pages' script polls, and cancel ---------------------------------------------------

@router.get("/api/batches")
async def index_json(request: Request) -> Response:
    project = auth.project(request)
    if project is None:
        return _not_signed_in()
    return _json(await run_in_threadpool(views.index, _runtime(request), project))


@router.get("/api/batches/{batch_id}")
async def batch_json(request: Request, batch_id: str) -> Response:
    project = auth.project(request)
    if project is None:
        return _not_signed_in()
    rt = _runtime(request)
    data = await run_in_threadpool(lambda: views.detail(rt, _batch(rt, project, batch_id), _failures))
    return _json(data)


@router.post("/api/batches/{batch_id}/cancel")
async def cancel(request: Request, batch_id: str) -> Response:
    project = auth.project(request)
    if project is None:
        return _not_signed_in()
    if not auth.csrf_ok(request):
        return _json({"error": {"message": "Missing or wrong X-Freight-CSRF header.", "type": "permission_error",
                                "param": None, "code": "csrf"}}, 403)
    rt = _runtime(request)

    def run() -> dict[str, Any]:
        batch = rt.batches.cancel(project, _batch(rt, project, batch_id).id)
        return views.detail(rt, batch, _failures)

    return _json(await run_in_threadpool(run))


# ---- downloads: the API's own routes, reached with the dashboard's sign-in ----------------------

def _attachment(response: Response, filename: str) -> Response:
    response.headers["content-disposition"] = f'attachment; filename="{filename}"'
    return _secure(response)


@router.get("/batches/{batch_id}/output")
async def download_output(request: Request, batch_id: str) -> Response:
    return await _download(request, batch_id, "output")


@router.get("/batches/{batch_id}/errors")
async def download_errors(request: Request, batch_id: str) -> Response:
    return await _download(request, batch_id, "errors")


async def _download(request: Request, batch_id: str, which: str) -> Response:
    project = auth.project(request)
    if project is None:
        return _to_login()
    rt = _runtime(request)
    batch = await run_in_threadpool(_batch, rt, project, batch_id)
    file_id = batch.output_file_id if which == "output" else batch.error_file_id
    if not file_id:
        raise NotFound(f"Batch '{batch.id}' has no {which} file (yet).", param="batch_id")
    response = await openai_files.file_content(request, file_id)
    return _attachment(response, f"{batch.id}_{which}.jsonl")


@router.get("/batches/{batch_id}/partial")
async def download_partial(request: Request, batch_id: str) -> Response:
    project = auth.project(request)
    if project is None:
        return _to_login()
    rt = _runtime(request)
    batch = await run_in_threadpool(_batch, rt, project, batch_id)
    response = await openai_batches.partial_results(request, batch.id)
    return _attachment(response, f"{batch.id}_partial.jsonl")
