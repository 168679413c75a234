"""Store calls beside a batch step's own work: on a thread of their own when the store's work runs in a
server (``Store.out_of_process``: PostgreSQL), so that its round trip overlaps the step's Python; at once
otherwise (SQLite runs in this process, under the interpreter's lock, and overlapping it measured no
faster: docs/benchmarks.md#engine). Used by ingest (inserts) and finalizing (the next page of results)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from freight.ports import Store

#: ``run(fn, *args)``: a future of ``fn(*args)``.
Run = Callable[..., "Future[Any]"]


@contextlib.contextmanager
def beside(store: Store, name: str) -> Iterator[Run]:
    if not store.out_of_process:
        yield _at_once
        return
    with ThreadPoolExecutor(1, thread_name_prefix=f"freight-{name}") as pool:
        yield pool.submit


def _at_once(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    done: Future[Any] = Future()
    done.set_result(fn(*args))  # (a failure is raised here, at the call, as before there was a thread)
    return done
