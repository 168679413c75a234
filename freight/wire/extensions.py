"""freight's extension fields on API objects: all under one ``freight`` key, so strict clients that
ignore unknown keys see the provider's object unchanged. Add a batch's new extension fields here."""

from __future__ import annotations

from typing import Any

from freight.domain.batches import Batch


def batch_extension(b: Batch) -> dict[str, Any]:
    """The ``freight`` object of a Batch (OpenAI) or MessageBatch (Anthropic); an ended batch is not paused."""
    return {"priority": b.priority, "paused_at": None if b.is_terminal else b.paused_at,
            "schedule": b.schedule, "not_before": b.not_before}
