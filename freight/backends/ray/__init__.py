"""Local models on a Ray cluster (``placement = "ray"`` in a model's table; docs/ray.md).

- ``placement``: the model table's Ray keys, parsed and checked without importing Ray.
- ``replica``: ``ModelReplica``, the actor holding one loaded copy of the model.
- ``pool``: ``ReplicaPool``, the model's actors (named, detached, never restarted by Ray) and dispatch.
- ``backend``: ``RayBackend``, the ``freight.ports.Backend`` the engine sees, and the autoscaler.

Ray is imported only when a model placed on Ray starts (``pip install 'freight[ray]'``).
"""

from freight.backends.ray.backend import RayBackend
from freight.backends.ray.placement import PLACEMENT_KEYS, RayPlacement, check_address, parse_placement
from freight.backends.ray.pool import REPLICA_LOST, ReplicaPool
from freight.domain.requests import MODEL_UNAVAILABLE  # (re-exported: the code of a model no replica can load)

__all__ = ["MODEL_UNAVAILABLE", "PLACEMENT_KEYS", "REPLICA_LOST", "RayBackend", "RayPlacement", "ReplicaPool",
           "check_address", "parse_placement"]
