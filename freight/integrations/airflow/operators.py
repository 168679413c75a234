"""``FreightBatchOperator``: submit a batch to freight, wait in the triggerer, return where its results are.

    FreightBatchOperator(
        task_id="summarize",
        requests=[{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-4o-mini", "messages": [...]}}],   # or input_file="/data/in.jsonl"
        freight_url="http://freight:8080", extra_body={"priority": 5, "max_cost_usd": 20},
        download_to="/data/results",
    )

``execute`` uploads the requests and creates the batch (freight.client), then defers to
:class:`FreightBatchTrigger`; ``execute_complete`` runs when the trigger fires and returns (to XCom)
the batch's id, status, request counts, cost, ``output_file_id``/``error_file_id`` and, with
``download_to``, the paths of the downloaded files. A batch that ends in a state listed in
``fail_on`` (default: failed, expired, cancelled) fails the task. ``deferrable=False`` waits in the
worker instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from freight.client import Client
from freight.integrations.airflow.triggers import FreightBatchTrigger
from freight.integrations.batches import check_ended, fail_on_of, lines_of, summary


def _count(lines: Any) -> str:
    """The requests submitted, for the log (a batch still validating counts none yet)."""
    return f"{len(lines)} requests" if isinstance(lines, list) else f"from {lines}"


class FreightBatchOperator(BaseOperator):  # type: ignore[misc]  # Airflow is untyped where it is not installed
    template_fields: Sequence[str] = ("requests", "input_file", "model", "extra_body", "metadata", "download_to",
                                      "freight_url", "api_key")

    def __init__(self, *, requests: list[dict[str, Any]] | None = None, input_file: str | None = None,
                 model: str | None = None, endpoint: str | None = None, completion_window: str = "24h",
                 extra_body: Mapping[str, Any] | None = None, metadata: Mapping[str, str] | None = None,
                 freight_url: str | None = None, api_key: str | None = None, poll_interval_s: float = 5.0,
                 wait_timeout: timedelta | None = None, fail_on: Iterable[str] | None = None,
                 download_to: str | None = None, deferrable: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if (requests is None) == (input_file is None):
            raise ValueError("FreightBatchOperator takes exactly one of requests= and input_file=")
        self.requests = requests
        self.input_file = input_file
        self.model = model
        self.endpoint = endpoint
        self.completion_window = completion_window
        self.extra_body = dict(extra_body) if extra_body is not None else None
        self.metadata = dict(metadata) if metadata is not None else None
        self.freight_url = freight_url
        self.api_key = api_key
        self.poll_interval_s = poll_interval_s
        self.wait_timeout = wait_timeout
        self.fail_on = sorted(fail_on_of(fail_on))
        self.download_to = download_to
        self.deferrable = deferrable

    def _client(self) -> Client:
        return Client(self.freight_url, self.api_key)

    def execute(self, context: Any) -> dict[str, Any]:
        source = self.input_file if self.input_file is not None else self.requests
        lines = lines_of(source, model=self.model, endpoint=self.endpoint)
        with self._client() as client:
            batch = client.submit(lines, endpoint=self.endpoint, completion_window=self.completion_window,
                                  metadata=self.metadata, extra_body=self.extra_body)
            self.log.info("freight batch %s created (%s)", batch["id"], _count(lines))
            if not self.deferrable:
                timeout_s = None if self.wait_timeout is None else self.wait_timeout.total_seconds()
                ended = client.wait(batch["id"], poll_s=self.poll_interval_s, timeout_s=timeout_s)
                return self._finish(client, ended, polls=None)
        self.defer(trigger=FreightBatchTrigger(batch["id"], self.freight_url, self.api_key, self.poll_interval_s),
                   method_name="execute_complete", timeout=self.wait_timeout)
        raise AssertionError("unreachable: defer() raises")  # pragma: no cover

    def execute_complete(self, context: Any, event: Mapping[str, Any]) -> dict[str, Any]:
        if event.get("status") != "ended":
            raise RuntimeError(f"freight batch {event.get('batch_id')}: {event.get('message')}")
        with self._client() as client:
            return self._finish(client, event["batch"], polls=event.get("polls"))

    def _finish(self, client: Client, batch: Mapping[str, Any], polls: int | None) -> dict[str, Any]:
        check_ended(batch, frozenset(self.fail_on))
        out = summary(batch)
        out["trigger_polls"] = polls
        if self.download_to is not None:
            folder = Path(self.download_to)
            folder.mkdir(parents=True, exist_ok=True)
            for kind in ("output", "error"):
                file_id = batch.get(f"{kind}_file_id")
                path = folder / f"{batch['id']}.{kind}.jsonl"
                if file_id:
                    path.write_bytes(client.file_content(file_id))
                out[f"{kind}_path"] = str(path) if file_id else None
        self.log.info("freight batch %s ended %s: %s", batch["id"], batch["status"], out)
        return out
