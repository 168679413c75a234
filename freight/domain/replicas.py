"""How many replicas of a model should run: a pure function of its queue depth (docs/ray.md).

A model placed on Ray (``placement = "ray"``) runs on ``replicas = { min, max }`` actors, each holding
the loaded model. Every ``scale_interval_s`` the replica pool asks ``desired_replicas`` and starts or
retires actors to match:

- **Grow at once** to ``ceil(queued / per_replica)`` (within the bounds) when that is more than run now:
  a queue is work waiting, and a replica takes seconds to load.
- **Shrink only when the queue has drained** (nothing queued): to ``min``. A queue that is shrinking but
  not empty keeps every replica, so that a queue hovering around a threshold does not start and stop
  actors (and load models) over and over.
- A count outside the bounds (the bounds changed, or another process started more) is brought inside.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaBounds:
    """``replicas = { min = 1, max = 4 }``: how many replicas of a model may run."""

    min: int = 1
    max: int = 1

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < 1 or self.min > self.max:
            raise ValueError(f"need 0 <= min <= max and max >= 1, got min={self.min}, max={self.max}")


def desired_replicas(queued: int, current: int, bounds: ReplicaBounds, per_replica: int) -> int:
    """How many replicas should run, given ``queued`` requests of the model waiting in the store,
    ``current`` replicas running, and ``per_replica`` requests one replica keeps busy (its chunks in
    flight times the chunk size)."""
    if per_replica < 1:
        raise ValueError("per_replica must be at least 1")
    queued = max(0, queued)
    current = min(max(current, bounds.min), bounds.max)
    wanted = min(max(-(-queued // per_replica), bounds.min), bounds.max)
    if wanted > current:
        return wanted
    if queued == 0:
        return bounds.min
    return current
