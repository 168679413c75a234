"""Outputs validated before they are written, on every backend: a wrapper around any backend.

``build_backends`` wraps every backend in an ``OutputCheck``. For each request that asks for a JSON
schema (``response_format`` ``json_schema``/``json_object``, a forced tool, the Responses API's
``text.format``) or whose batch has an ``output_schema`` (given to the request at ingest under
``BATCH_SCHEMA_KEY``, taken off here before the request is sent), a 2xx answer is checked
(freight/services/outputs.py). An invalid answer is asked again, at most ``retries`` more times,
and every try's tokens count in the result (so in the cost); still invalid, the request's result
is an ``output_invalid`` error line with the validation error, never an output line. Results carry
how many invalid answers they took (``invalid_outputs`` on the Batch object).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from freight.domain.cache_key import NO_CACHE_KEY
from freight.domain.ids import new_request_id
from freight.domain.requests import OUTPUT_INVALID, Failure, Outcome, Result
from freight.ports import Backend, ModelInfo
from freight.services.outputs import BATCH_SCHEMA_KEY, Check, check_answer, requested_check, unusable
from freight.wire import jsonx
from freight.wire.openai import error_envelope

#: More tries for an invalid answer (each is another model call, counted in the cost).
DEFAULT_RETRIES = 2


class OutputCheck:
    """A ``Backend`` whose 2xx answers satisfy the schema their request asked for, or are errors."""

    def __init__(self, inner: Backend, retries: int = DEFAULT_RETRIES):
        self.inner = inner
        self.retries = retries
        self.chunk_size = inner.chunk_size
        self.max_concurrency = inner.max_concurrency

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def models(self) -> Sequence[ModelInfo]:
        return self.inner.models()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        clean: list[dict[str, Any]] = []
        checks: list[Check | None] = []
        for body in bodies:
            batch_schema = body.get(BATCH_SCHEMA_KEY)
            if BATCH_SCHEMA_KEY in body or NO_CACHE_KEY in body:  # (the marker reaches here when no cache is on)
                body = {k: v for k, v in body.items() if k not in (BATCH_SCHEMA_KEY, NO_CACHE_KEY)}
            clean.append(body)
            checks.append(requested_check(endpoint, body, batch_schema if isinstance(batch_schema, dict) else None))
        refused = {i: why for i, check in enumerate(checks) if check is not None and (why := unusable(check))}
        if refused:
            return await self._without(endpoint, bodies, refused)
        results = list(await self.inner.execute(endpoint, clean))
        if not any(checks) or len(results) != len(clean):
            return results
        spent = [(0, 0)] * len(clean)
        problems: dict[int, str] = {}
        invalid = [0] * len(clean)
        todo = list(range(len(clean)))
        for attempt in range(self.retries + 1):
            problems = {}
            for i in todo:
                check, result = checks[i], results[i]
                if check is None or not isinstance(result, Result) or result.outcome is not Outcome.SUCCEEDED:
                    continue
                problem = check_answer(endpoint, result.body, check)
                if problem is not None:
                    problems[i] = problem
                    invalid[i] += 1
                    tokens_in, tokens_out = spent[i]
                    spent[i] = (tokens_in + result.input_tokens, tokens_out + result.output_tokens)
            todo = sorted(problems)
            if not todo or attempt == self.retries:
                break
            again = await self.inner.execute(endpoint, [clean[i] for i in todo])
            if len(again) != len(todo):
                break
            for i, result in zip(todo, again, strict=True):
                results[i] = result
        out: list[Result | Failure] = []
        for i, result in enumerate(results):
            tokens_in, tokens_out = spent[i]
            if i in problems:
                out.append(Result(
                    error_code=OUTPUT_INVALID, input_tokens=tokens_in, output_tokens=tokens_out,
                    invalid_outputs=invalid[i],
                    error_message=f"The answer failed its JSON-schema check on all {invalid[i]} tries: "
                                  f"{problems[i]}."))
            elif invalid[i] and isinstance(result, Result):
                out.append(dataclasses.replace(result, input_tokens=result.input_tokens + tokens_in,
                                               output_tokens=result.output_tokens + tokens_out,
                                               invalid_outputs=invalid[i]))
            else:
                out.append(result)
        return out

    async def _without(self, endpoint: str, bodies: Sequence[dict[str, Any]],
                       refused: dict[int, str]) -> list[Result | Failure]:
        """The requests whose schema cannot be used get a 400 (never sent, nothing spent); the others run."""
        send = [i for i in range(len(bodies)) if i not in refused]
        got = list(await self.execute(endpoint, [bodies[i] for i in send])) if send else []
        if len(got) != len(send):
            return got  # a broken backend: the engine reports it as it is
        out: dict[int, Result | Failure] = dict(zip(send, got, strict=True))
        for i, why in refused.items():
            out[i] = Result(status_code=400, request_id=new_request_id(), body=jsonx.dumps(
                error_envelope(why, "invalid_request_error", None, "invalid_value")))
        return [out[i] for i in range(len(bodies))]
