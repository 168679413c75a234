"""``kind = "http"`` intake through real HTTP: tickets, idempotent retries, 400 for a malformed message,
results that survive kill -9, and the batches it makes are ordinary (listed) batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from servers import SCRIPTED, FreightServer, config_text, wait_for

TABLE = f'\n[intake."web"]\nkind = "http"\nmodel = "{SCRIPTED}"\nflush_size = 10\nflush_age_s = 0.2\n'


def test_http_tickets_get_results_across_a_kill(tmp_path: Path) -> None:
    config = tmp_path / "freight.toml"
    config.write_text(config_text(extra=TABLE))
    server = FreightServer(tmp_path / "data", config).start()
    try:
        base = server.url + "/v1/freight/intake/web"
        tickets: dict[str, str] = {}
        for i in range(25):
            body = {"custom_id": f"c{i}", "body": {"messages": [{"role": "user", "content": f"hi {i}"}]}}
            r = httpx.post(base, json=body, headers={"idempotency-key": f"k{i}"})
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "queued"
            assert r.headers["location"] == f"/v1/freight/intake/web/{r.json()['id']}"
            tickets[f"c{i}"] = r.json()["id"]
        retried = {"custom_id": "c3", "body": {"messages": [{"role": "user", "content": "hi 3"}]}}
        again = httpx.post(base, json=retried, headers={"idempotency-key": "k3"})
        assert again.status_code == 202 and again.json()["id"] == tickets["c3"]  # a retry: the same ticket, kept once
        # Another message under a used key would silently get the first's ticket (and its answer): refused.
        reused = httpx.post(base, json={"custom_id": "c3", "body": {"messages": []}}, headers={"idempotency-key": "k3"})
        assert reused.status_code == 422, reused.text
        assert {k: reused.json()["error"][k] for k in ("code", "param")} == {
            "code": "idempotency_key_reused", "param": "Idempotency-Key"}
        bad = httpx.post(base, content=b"{nope")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        assert httpx.post(base, json={"body": {"model": "nope"}}).json()["error"]["code"] == "model_not_found"
        # What a batch line may not hold is refused here too, not left to fail the whole flush's batch:
        streamed = httpx.post(base, json={"body": {"messages": [], "stream": True}})
        assert streamed.status_code == 400 and {k: streamed.json()["error"][k] for k in ("code", "param")} == {
            "code": "streaming_unsupported", "param": "body.stream"}
        nul = httpx.post(base, content=b'{"custom_id": "a\\u0000b", "body": {"messages": []}}')
        assert nul.status_code == 400 and nul.json()["error"]["param"] == "custom_id", nul.text  # (was a 500)
        assert httpx.get(server.url + "/v1/freight/intake/other/x").status_code == 404
        assert httpx.get(base + "/itk_000000000000000000000000").status_code == 404
        server.restart()  # kill -9: the tickets are in the store

        def results() -> dict[str, Any]:
            got = {c: httpx.get(f"{base}/{t}").json() for c, t in tickets.items()}
            return got if all(g["status"] != "queued" for g in got.values()) else {}

        got = wait_for(results, 30, "every ticket's result")
        for custom_id, ticket in got.items():
            assert ticket["status"] == "completed", ticket
            assert ticket["result"]["custom_id"] == custom_id
            assert ticket["result"]["response"]["status_code"] == 200
        listed = server.client().batches.list()
        assert {b.id for b in listed.data} == {t["batch_id"] for t in got.values()}
        assert len(listed.data) >= 3  # 25 messages, flush_size 10
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        server.stop()
