"""freight: the bulk lane for AI work.

An OpenAI-compatible Files + Batches server and a durable batch engine that runs each
request on a local model, a remote endpoint or a provider's batch lane.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
