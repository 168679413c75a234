"""The plain records that cross the store ports (requests in, results out, pages)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freight.domain.records import quick_init
from freight.domain.requests import Result


@quick_init
@dataclass(frozen=True)
class NewRequest:
    idx: int
    line: int
    custom_id: str
    body: bytes


@quick_init
@dataclass(frozen=True)
class Completion:
    idx: int
    attempt_id: str
    result: Result


@quick_init
@dataclass(frozen=True)
class Retry:
    idx: int
    attempt_id: str
    not_before: float
    last_error: str
    #: The attempt never started (withdrawn by a pause before it was sent): it is not counted.
    refund: bool = False


@quick_init
@dataclass(frozen=True)
class StoredResult:
    idx: int
    custom_id: str
    result: Result


@dataclass(frozen=True)
class Page:
    items: list[Any]
    has_more: bool
