"""The dashboard (``/dashboard``) in a real headless browser: Debian's chromium (``make install``
puts it at /usr/bin/chromium) driven by Playwright, against one ``freight serve`` with API keys for
two projects. Batches are made through the official SDKs; the pages are only ever looked at and
clicked, as a person would.

``FREIGHT_DASHBOARD_SCREENSHOTS=docs/images`` also writes the screenshots of docs/dashboard.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from playwright.sync_api import sync_playwright
from servers import SCRIPTED, SCRIPTED_SLOW, TERMINAL, FreightServer, config_text, jsonl_bytes, request_line, wait_for

from freight.domain.pricing import usd_text

CHROMIUM = "/usr/bin/chromium"
HOSTILE_ID = '<img src=x onerror="document.body.dataset.pwned=1">'
HOSTILE_MODEL = "<b>bold</b><script>document.body.dataset.pwned=2</script>"
SHOTS = os.environ.get("FREIGHT_DASHBOARD_SCREENSHOTS")

#: A browser and one server for the module: about 40 s in all on a loaded 2-core machine.
pytestmark = pytest.mark.slow



# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(make_server: Callable[..., FreightServer]) -> FreightServer:
    # Both scripted models priced, so that the pages show a cost (docs/cost.md).
    price = 'price = { input_per_mtok = 1000.0, output_per_mtok = 4000.0 }\n'
    config = config_text(slow_chunk=1, slow_concurrency=1).replace('backend = "scripted"\n',
                                                                    'backend = "scripted"\n' + price)
    s = make_server(config, start=False)
    s.keys = {p: s.create_key(p) for p in ("alpha", "beta")}  # type: ignore[attr-defined]
    return s.start()


def key(server: FreightServer, project: str) -> str:
    found: str = server.keys[project]  # type: ignore[attr-defined]
    return found


@pytest.fixture(scope="module")
def alpha(server: FreightServer) -> Iterator[openai.OpenAI]:
    with server.client(api_key=key(server, "alpha")) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: `make install` installs Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def signed_in(browser: Any, server: FreightServer, project: str) -> Any:
    """A new browser context (its own cookies) signed in with ``project``'s key, on the index."""
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the pages' CSP forbids (and
    # without the CSP, the escaping test shows that escaping alone keeps hostile text inert).
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.goto(server.url + "/dashboard")
    assert page.url.endswith("/dashboard/login"), "a person without a key is sent to the sign-in form"
    page.fill("#key", key(server, project))
    page.click("#login-form button[type=submit]")
    page.wait_for_url(server.url + "/dashboard")
    return page


def shot(page: Any, name: str, tmp: Path) -> None:
    path = tmp / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)


def batch_of(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    f = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def finished(client: openai.OpenAI, batch_id: str, timeout_s: float = 30) -> Any:
    return wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in TERMINAL and b, timeout_s,
                    f"{batch_id} to finish")


@contextlib.contextmanager
def session(server: FreightServer, project: str) -> Iterator[httpx.Client]:
    """An HTTP client signed in through the form (its cookie jar holds the dashboard cookie)."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/dashboard/login", data={"key": key(server, project)})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard" in cookie
        yield c


def csrf(c: httpx.Client) -> str:
    found = re.search(r'name="freight-csrf" content="([0-9a-f]+)"', c.get("/dashboard").text)
    assert found
    return found.group(1)


# ---- tests ---------------------------------------------------------------------------------

def test_index_lists_every_batch_of_the_project(server: FreightServer, alpha: openai.OpenAI, browser: Any,
                                                 tmp_path: Path) -> None:
    done = finished(alpha, batch_of(alpha, [request_line(f"ok{i}") for i in range(3)]
                                    + [request_line("bad", status=400)]).id)
    with anthropic.Anthropic(base_url=server.url, api_key=key(server, "alpha"), max_retries=0) as claude:
        mb = claude.messages.batches.create(requests=[{"custom_id": "m1", "params": {
            "model": SCRIPTED, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}}])
    page = signed_in(browser, server, "alpha")
    row = page.locator(f'#batches tr[data-batch-id="{done.id}"]')
    row.wait_for()
    assert "completed" in row.inner_text() and "4 / 4 (3 ok, 1 failed)" in row.inner_text()
    assert row.locator("progress").get_attribute("value") in ("1", "1.0")
    assert usd_text(done.model_extra["freight"]["cost_usd"]) in row.inner_text()
    mrow = page.locator("#batches tr", has_text=mb.id)
    mrow.wait_for()
    assert "anthropic" in mrow.inner_text()
    shot(page, "index", tmp_path)
    page.context.close()


def test_the_index_lists_batches_in_the_apis_order(server: FreightServer, alpha: openai.OpenAI) -> None:
    """Newest first, and batches made within one second as the API lists them (it sorted by random id)."""
    made = [batch_of(alpha, [request_line(f"o{i}")]).id for i in range(4)]
    listed = [b.id for b in alpha.batches.list(limit=100) if b.id in made]
    with session(server, "alpha") as c:
        shown = [row["id"] for row in c.get("/dashboard/api/batches").json()["batches"] if row["id"] in made]
    assert listed == made[::-1] and shown == listed, (made, listed, shown)


def test_a_batch_that_failed_validation_shows_an_empty_bar(server: FreightServer, alpha: openai.OpenAI) -> None:
    """No requests and not completed: nothing was done, so not a full bar."""
    failed = finished(alpha, batch_of(alpha, [{"custom_id": "x", "method": "POST", "url": "/v1/nope", "body": {}}]).id)
    assert failed.status == "failed" and failed.request_counts.total == 0
    with session(server, "alpha") as c:
        row = next(r for r in c.get("/dashboard/api/batches").json()["batches"] if r["id"] == failed.id)
    assert row["progress"] == 0.0 and row["status"] == "failed"


def test_a_cost_too_small_for_four_decimals_is_not_shown_as_free() -> None:
    assert usd_text(2.4e-05) == "<$0.0001" and usd_text(0.0) == "$0.0000" and usd_text(None, "—") == "—"
    assert usd_text(0.00005) == "$0.0001" and usd_text(123.456) == "$123.46" and usd_text(-2e-6) == "-<$0.0001"


def test_a_batch_page_updates_live_until_it_completes(server: FreightServer, alpha: openai.OpenAI, browser: Any,
                                                       tmp_path: Path) -> None:
    lines = [request_line(f"slow{i}", model=SCRIPTED_SLOW, sleep_s=0.4) for i in range(8)]
    lines.append(request_line("refused", model=SCRIPTED_SLOW, status=400))
    b = batch_of(alpha, lines)
    page = signed_in(browser, server, "alpha")
    page.goto(f"{server.url}/dashboard/batches/{b.id}")
    page.evaluate("window.__sameDocument = true")
    wait_for(lambda: page.text_content("#status") == "in_progress" and int(page.text_content("#completed")) > 0,
             30, "the page to show progress")
    shot(page, "batch-running", tmp_path)
    page.wait_for_function("document.getElementById('status').textContent === 'completed'", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True, "updated in place, not reloaded"
    assert int(page.get_attribute("body", "data-updates") or 0) >= 2
    assert page.text_content("#counts") == "9 / 9 (8 ok, 1 failed)"
    assert page.locator("#cancel").is_hidden()
    group = page.locator('.failure-group[data-code="invalid_request_error"]')
    text = group.inner_text()
    assert "× 1" in text and "refused" in text and "scripted failure 400" in text
    shot(page, "batch-completed", tmp_path)
    output = page.request.get(server.url + page.get_attribute('a[data-link="output"]', "href"))
    assert output.status == 200 and len(output.text().splitlines()) == 8
    errors = page.request.get(server.url + page.get_attribute('a[data-link="errors"]', "href"))
    assert errors.status == 200 and '"refused"' in errors.text()
    partial = page.request.get(server.url + page.get_attribute('a[data-link="partial"]', "href"))
    assert partial.status == 200 and len(partial.text().splitlines()) == 9
    page.context.close()


def test_cancel_from_the_page(server: FreightServer, alpha: openai.OpenAI, browser: Any) -> None:
    b = batch_of(alpha, [request_line(f"c{i}", model=SCRIPTED_SLOW, sleep_s=1.0) for i in range(30)])
    page = signed_in(browser, server, "alpha")
    page.goto(f"{server.url}/dashboard/batches/{b.id}")
    page.locator("#cancel").wait_for(state="visible")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_function("['cancelling', 'cancelled'].includes(document.getElementById('status').textContent)",
                           timeout=15_000)
    ended = finished(alpha, b.id)
    assert ended.status == "cancelled" and ended.request_counts.completed < 30
    page.wait_for_function("document.getElementById('status').textContent === 'cancelled'", timeout=15_000)
    page.context.close()


def dashboard_routes() -> list[tuple[str, str]]:
    """(method, path) of every dashboard route but the open ones (sign-in, sign-out, static files)."""
    from freight.api.dashboard import router

    out = []
    for route in router.routes:
        path = getattr(route, "path", "")
        if path.endswith(("/login", "/logout")) or "/static/" in path:
            continue
        out += [(method, path) for method in sorted(getattr(route, "methods", ())) if method != "HEAD"]
    return out


def test_each_project_sees_only_its_own_batches(server: FreightServer, alpha: openai.OpenAI, browser: Any) -> None:
    theirs = finished(alpha, batch_of(alpha, [request_line("a1"), request_line("a2", status=400)]).id)
    assert theirs.output_file_id and theirs.error_file_id
    routes = dashboard_routes()
    assert len(routes) >= 8, routes
    page = signed_in(browser, server, "beta")
    assert page.locator(f'#batches tr[data-batch-id="{theirs.id}"]').count() == 0
    assert "No batches yet." in page.text_content("#batches")
    response = page.goto(f"{server.url}/dashboard/batches/{theirs.id}")
    assert response.status == 404 and theirs.id in page.text_content("#not-found")
    page.context.close()
    # Every dashboard route that names a batch: 200 for its own project, 404 for another's.
    with session(server, "alpha") as mine, session(server, "beta") as other:
        for method, path in routes:
            if "{batch_id}" not in path or method != "GET":
                continue
            url = path.replace("{batch_id}", theirs.id)
            assert mine.get(url).status_code == 200, url
            assert other.get(url).status_code == 404, url
        r = other.post(f"/dashboard/api/batches/{theirs.id}/cancel", headers={"x-freight-csrf": csrf(other)})
        assert r.status_code == 404
        assert theirs.id not in other.get("/dashboard/api/batches").text
    # Signed out: every route sends to the sign-in form (pages) or answers 401 (what the script calls).
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for method, path in routes:
            r = anonymous.request(method, path.replace("{batch_id}", theirs.id))
            if "/api/" in path:
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (method, path)
            else:
                assert r.status_code == 303 and r.headers["location"] == "/dashboard/login", (method, path)
        wrong = anonymous.post("/dashboard/login", data={"key": key(server, "alpha")[:-3] + "xyz"})
        assert wrong.status_code == 401 and "not valid" in wrong.text and "set-cookie" not in wrong.headers
        # The cookie is the dashboard's only: the API never takes it.
        anonymous.cookies.set("freight_dashboard", key(server, "alpha"))
        assert anonymous.get("/v1/batches").status_code == 401
    running = batch_of(alpha, [request_line("slow", model=SCRIPTED_SLOW, sleep_s=1.0)])
    with session(server, "alpha") as mine:
        url = f"/dashboard/api/batches/{running.id}/cancel"
        assert mine.post(url).status_code == 403, "no CSRF header"
        assert mine.post(url, headers={"x-freight-csrf": "0" * 40}).status_code == 403
        foreign = {"x-freight-csrf": csrf(mine), "origin": "http://evil.example"}
        assert mine.post(url, headers=foreign).status_code == 403, "another origin"
        assert mine.post("/dashboard/logout").status_code == 403, "sign-out needs the token too"
    assert finished(alpha, running.id).status == "completed", "no refused cancel went through"


def test_without_keys_the_dashboard_is_open_like_the_api(make_server: Callable[..., FreightServer]) -> None:
    open_server = make_server(config_text())
    with open_server.client() as client:
        b = finished(client, batch_of(client, [request_line("one")]).id)
    with httpx.Client(base_url=open_server.url, timeout=30) as c:
        assert c.get("/dashboard/login").headers["location"] == "/dashboard"
        page = c.get("/dashboard")
        assert page.status_code == 200 and b.id in page.text and "project <b>default</b>" in page.text
        assert c.get(f"/dashboard/api/batches/{b.id}").json()["batch"]["status"] == "completed"


def test_custom_ids_and_error_messages_are_escaped(server: FreightServer, alpha: openai.OpenAI,
                                                    browser: Any) -> None:
    failed = finished(alpha, batch_of(alpha, [request_line(HOSTILE_ID, status=400)]).id)
    invalid = finished(alpha, batch_of(alpha, [request_line("x", model=HOSTILE_MODEL)]).id)
    assert failed.request_counts.failed == 1 and invalid.status == "failed"
    assert any(HOSTILE_MODEL in e.message for e in invalid.errors.data), invalid.errors
    with session(server, "alpha") as c:
        for b in (failed, invalid):
            html = c.get(f"/dashboard/batches/{b.id}").text
            assert "<img src=x" not in html and "<script>document" not in html and "<b>bold" not in html
            csp = c.get(f"/dashboard/batches/{b.id}").headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "&lt;img src=x onerror=" in c.get(f"/dashboard/batches/{failed.id}").text
        data = c.get(f"/dashboard/api/batches/{failed.id}").json()
        assert data["failures"]["groups"][0]["examples"][0]["custom_id"] == HOSTILE_ID
    page = signed_in(browser, server, "alpha")
    for b, text in ((failed, HOSTILE_ID), (invalid, HOSTILE_MODEL)):
        page.goto(f"{server.url}/dashboard/batches/{b.id}")
        page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1", timeout=15_000)  # the script ran
        assert text in page.text_content("#failures"), "shown as text"
        assert page.locator("#failures img, #failures script, #failures b").count() == 0
        assert page.get_attribute("body", "data-pwned") is None
    page.context.close()
