"""Webhook policy (freight.domain.webhooks) and its config: signatures the official SDK verifies,
the retry schedule, which URLs may receive deliveries."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from freight.config import load_settings
from freight.domain.errors import ConfigError
from freight.domain.webhooks import (
    WebhookEndpoint,
    WebhookPolicy,
    check_url,
    event_payload,
    new_secret,
    secret_hint,
    signed_headers,
)

NOW = 1_700_000_000.0


def endpoint(secret: str, old: str | None = None, old_until: int | None = None) -> WebhookEndpoint:
    return WebhookEndpoint("we_" + "1" * 24, "p", "n", "https://x", ("batch.completed",), secret, int(NOW), int(NOW),
                           old, old_until)


def test_a_signed_delivery_is_what_the_sdk_verifies_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: NOW + 10)
    secret = new_secret()
    body = event_payload("evt_1", "batch.expired", int(NOW), "batch_" + "a" * 24)
    headers = signed_headers(endpoint(secret), "evt_1", body, NOW)
    client = OpenAI(api_key="x", base_url="http://127.0.0.1:9")
    event = client.webhooks.unwrap(body, headers, secret=secret)
    assert (event.id, event.type, event.data.id, event.created_at) == ("evt_1", "batch.expired", "batch_" + "a" * 24,
                                                                       int(NOW))
    assert json.loads(body) == {"id": "evt_1", "type": "batch.expired", "object": "event", "created_at": int(NOW),
                                "data": {"id": "batch_" + "a" * 24}}
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body + b" ", headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret=new_secret())


def test_a_kept_old_secret_signs_too_until_it_lapses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: NOW)
    old, new = new_secret(), new_secret()
    client = OpenAI(api_key="x", base_url="http://127.0.0.1:9")
    body = event_payload("evt_2", "batch.completed", int(NOW), "batch_x")
    headers = signed_headers(endpoint(new, old, int(NOW) + 5), "evt_2", body, NOW)
    assert len(headers["webhook-signature"].split()) == 2
    client.webhooks.verify_signature(body, headers, secret=old)
    client.webhooks.verify_signature(body, headers, secret=new)
    lapsed = signed_headers(endpoint(new, old, int(NOW) - 1), "evt_2", body, NOW)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, lapsed, secret=old)
    assert secret_hint(new).endswith(new[-4:]) and new not in secret_hint(new)


def test_retries_back_off_exponentially_and_stop_after_retry_for() -> None:
    p = WebhookPolicy(retry_for_s=100, base_delay_s=5, max_delay_s=30)
    assert [p.next_attempt(n, NOW, NOW) for n in (1, 2, 3, 4, 5)] == [NOW + 5, NOW + 10, NOW + 20, NOW + 30, NOW + 30]
    assert p.next_attempt(9, NOW, NOW + 75) is None, "past the event's time + retry_for"
    assert WebhookPolicy().retry_for_s >= 3 * 24 * 3600, "days by default"


@pytest.mark.parametrize(("url", "allow_http", "ok"), [
    ("https://example.com/hook", False, True),
    ("http://127.0.0.1:8000/hook", False, True),
    ("http://[::1]/hook", False, True),
    ("http://localhost/hook", False, True),
    ("http://example.com/hook", False, False),
    ("http://10.0.0.1/hook", False, False),
    ("http://example.com/hook", True, True),
    ("ftp://example.com/", True, False),
    ("not a url", False, False),
    ("", False, False),
    ("https://example.com:8443/hook", False, True),
    ("https://[::1]:8443/hook", False, True),
    ("https://例え.jp/hook", False, True),
    # (a port httpx cannot use: each was accepted, then no delivery could be attempted or recorded)
    ("https://example.com:abc/h", False, False),
    ("https://example.com:99999/h", False, False),
    ("https://example.com:0/h", False, False),
    ("https://example.com:-1/h", False, False),
    ("https://[::1/h", False, False),
    ("https://exa mple.com/h", False, False),
    ("https://example.com/h\x00", False, False),
])
def test_plain_http_only_to_loopback_unless_allowed(url: str, allow_http: bool, ok: bool) -> None:
    assert (check_url(url, allow_http) is None) is ok


def test_the_webhooks_section_of_freight_toml(tmp_path: Path) -> None:
    path = tmp_path / "freight.toml"
    path.write_text('[webhooks]\nretry_for = "2d"\nretry_base_delay_s = 1\nallow_http = true\n'
                    '[metrics]\nproject_label = true\n')
    s = load_settings(path, env={})
    assert (s.webhooks.retry_for_s, s.webhooks.base_delay_s, s.webhooks.allow_http) == (2 * 86400, 1.0, True)
    assert s.metrics_project_label
    path.write_text("[webhooks]\nretry_forever = true\n")
    with pytest.raises(ConfigError, match="retry_forever"):
        load_settings(path, env={})
