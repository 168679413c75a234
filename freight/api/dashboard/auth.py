"""Who is looking at the dashboard, and the checks its changes pass (docs/dashboard.md).

With API keys configured, a person signs in with a key on ``/dashboard/login``; the key is kept in
an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard`` and is checked on every request like
an API key (``KeyService``), so a revoked key signs the person out at once. The app's middleware
reads the cookie for ``/dashboard`` paths only: the API itself never accepts it.

Changes (cancel, sign out) are POSTs that must carry ``X-Freight-CSRF`` with a token derived from
the session's key: the page's script reads it from a ``<meta>`` tag; another site can neither read
it nor send a custom header without a CORS preflight, which freight never grants. A POST whose
``Origin`` names another origin is refused too (the login form included).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

PREFIX = "/dashboard"
COOKIE = "freight_dashboard"
CSRF_HEADER = "x-freight-csrf"
#: Paths anyone may fetch: the sign-in page and the static files.
OPEN = (PREFIX + "/login", PREFIX + "/static/")


def is_dashboard_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def is_open_path(path: str) -> bool:
    return path == OPEN[0] or path.startswith(OPEN[1])


def cookie_key(request: Request) -> str | None:
    """The key a signed-in person's cookie holds (None: none)."""
    return request.cookies.get(COOKIE) or None


def csrf_token(request: Request) -> str:
    """The token a change must send in ``X-Freight-CSRF`` (the same for every page of one session)."""
    key = (cookie_key(request) or "").encode()
    return hmac.new(key, b"freight-dashboard-csrf", hashlib.sha256).hexdigest()[:40]


def same_origin(request: Request) -> bool:
    """False when the request says it comes from another origin (``Origin``, else ``Referer``)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin == own or origin.startswith(own + "/")


def csrf_ok(request: Request, form_value: str | None = None) -> bool:
    """The header (or, for a plain form, its ``csrf`` field) carries this session's token."""
    sent = request.headers.get(CSRF_HEADER) or form_value or ""
    return same_origin(request) and hmac.compare_digest(sent.encode(), csrf_token(request).encode())


def project(request: Request) -> str | None:
    """The project this request may see (None: not signed in, or a key that no longer works)."""
    found: str | None = getattr(request.state, "project", None)
    return found
