"""Dagster: :class:`FreightResource` and :func:`freight_batch_asset`, an asset that is one freight batch.

    reviews_summary = freight_batch_asset(
        "reviews_summary", requests_from="reviews", model="gpt-4o-mini",
        template="Summarize this review: {text}", id_column="review_id", body={"max_tokens": 64})

    defs = Definitions(assets=[reviews, reviews_summary],
                       resources={"freight": FreightResource(base_url="http://freight:8080")})

The upstream asset's value (a pandas/polars data frame, a list of dicts, or a JSONL path) becomes
the batch: with ``template`` one request per row (``freight.client.from_dataframe``), without it
rows that are batch lines or request bodies. The asset waits for the batch and returns its results
as a pandas data frame (``freight.client.Client.to_dataframe``: custom_id, status, answer, tokens,
cost, error), with the batch id, status, counts and cost as output metadata. Needs
``pip install 'freight[dagster]'``.
"""

# No ``from __future__ import annotations``: Dagster reads the asset function's annotations at run time.
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetIn, AssetKey, AssetsDefinition, ConfigurableResource, Output, asset

from freight.client import Client
from freight.integrations.batches import check_ended, fail_on_of, lines_of, summary


class FreightResource(ConfigurableResource):  # type: ignore[misc]  # Dagster is untyped where it is not installed
    """Where freight is: ``base_url`` (``http://host:8080``) and, when the server has keys, ``api_key``."""

    base_url: str = "http://127.0.0.1:8080"
    api_key: str | None = None
    poll_interval_s: float = 1.0

    def client(self) -> Client:
        return Client(self.base_url, self.api_key)

    def run_batch(self, source: Any, *, endpoint: str | None = None, completion_window: str = "24h",
                  extra_body: Mapping[str, Any] | None = None, metadata: Mapping[str, str] | None = None,
                  timeout_s: float | None = None, fail_on: Iterable[str] | None = None,
                  log: Any = None) -> tuple[dict[str, Any], Any]:
        """Submit ``source`` (what ``Client.submit`` takes), wait; (the ended Batch, its results frame)."""
        with self.client() as client:
            batch = client.submit(source, endpoint=endpoint, completion_window=completion_window,
                                  metadata=metadata, extra_body=extra_body)
            if log is not None:
                log.info(f"freight batch {batch['id']} created")
            batch = client.wait(batch["id"], poll_s=self.poll_interval_s, timeout_s=timeout_s)
            check_ended(batch, fail_on_of(fail_on))
            return batch, client.to_dataframe(batch["id"])


def freight_batch_asset(name: str, *, requests_from: str | Iterable[str] | AssetKey | AssetsDefinition,
                        model: str | None = None, template: str | None = None,
                        endpoint: str | None = None, id_column: str | None = None,
                        body: Mapping[str, Any] | None = None, completion_window: str = "24h",
                        extra_body: Mapping[str, Any] | None = None, timeout_s: float | None = None,
                        fail_on: Iterable[str] | None = None, resource_key: str = "freight",
                        group_name: str | None = None, description: str | None = None) -> AssetsDefinition:
    """An asset whose value is the results of one freight batch built from the asset ``requests_from``."""
    upstream = _key_of(requests_from)
    states = fail_on_of(fail_on)
    fixed = dict(body or {})

    @asset(name=name, ins={"requests": AssetIn(key=upstream)}, required_resource_keys={resource_key},  # type: ignore[untyped-decorator]
           group_name=group_name, description=description or f"freight batch over {upstream.to_user_string()}")
    def _batch_asset(context: AssetExecutionContext, requests: Any) -> Output[Any]:
        resource: FreightResource = getattr(context.resources, resource_key)
        source = lines_of(requests, model=model, template=template, endpoint=endpoint, id_column=id_column,
                          body=fixed)
        batch, frame = resource.run_batch(source, endpoint=endpoint, completion_window=completion_window,
                                          extra_body=extra_body, timeout_s=timeout_s, fail_on=states,
                                          metadata={"dagster_asset": name, "dagster_run": context.run.run_id},
                                          log=context.log)
        facts = {k: v for k, v in summary(batch).items() if v is not None}
        return Output(frame, metadata=facts)

    return _batch_asset


def _key_of(value: str | Iterable[str] | AssetKey | AssetsDefinition) -> AssetKey:
    if isinstance(value, AssetsDefinition):
        return value.key
    if isinstance(value, AssetKey):
        return value
    if isinstance(value, str):
        return AssetKey.from_user_string(value)
    return AssetKey(list(value))
