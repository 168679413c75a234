"""Which model names this freight serves, on which backend, for which endpoints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from freight.ports import Backend, BatchLane, ModelInfo


@dataclass(frozen=True)
class ServedModel:
    info: ModelInfo
    backend: Backend


class ModelCatalog:
    def __init__(self, backends: Iterable[Backend], lanes: Iterable[BatchLane] = ()):
        self.backends: list[Backend] = list(backends)
        #: Models forwarded to a provider's own batch API (freight/engine/lanes.py), not run here.
        self.lanes: list[BatchLane] = list(lanes)
        self._models: dict[str, ServedModel] = {}
        self._lane_models: dict[str, tuple[ModelInfo, BatchLane]] = {}
        for backend in self.backends:
            for info in backend.models():
                if info.id in self._models:
                    raise ValueError(f"model {info.id!r} is served by two backends")
                self._models[info.id] = ServedModel(info, backend)
        for lane in self.lanes:
            for info in lane.models():
                if info.id in self._models or info.id in self._lane_models:
                    raise ValueError(f"model {info.id!r} is served twice")
                self._lane_models[info.id] = (info, lane)

    def lane_for(self, model: str | None) -> BatchLane | None:
        """The batch lane a model is forwarded to; None for a model run here (or unknown)."""
        found = self._lane_models.get(model) if model is not None else None
        return found[1] if found else None

    def __contains__(self, model: str) -> bool:
        return model in self._models or model in self._lane_models

    def models(self) -> list[ModelInfo]:
        return [m.info for m in self._models.values()] + [info for info, _ in self._lane_models.values()]

    def batch_only(self, model: str) -> str | None:
        """Why ``model`` cannot answer a real-time request (a batch lane's: it is only forwarded in batches);
        None when it can, or when it is not served at all."""
        lane = self.lane_for(model) if model not in self._models else None
        if lane is None:
            return None
        return (f"The model '{model}' is served only through batches (its provider's batch API): send it in a "
                "batch (POST /v1/batches, or /v1/messages/batches).")

    def backend_for(self, model: str) -> Backend | None:
        served = self._models.get(model)
        return served.backend if served else None

    def check(self, model: str, endpoint: str) -> str | None:
        """None when ``model`` is served for ``endpoint``; else why not, for a model_not_found error."""
        served = self._models.get(model)
        info = served.info if served is not None else None
        if info is None and model in self._lane_models:
            info = self._lane_models[model][0]
        if info is None:
            names = ", ".join(sorted([*self._models, *self._lane_models])) or "none"
            return f"The provided model {model!r} is not served by this freight (served: {names})."
        if endpoint not in info.endpoints:
            supported = ", ".join(sorted(info.endpoints))
            return f"The model {model!r} does not support {endpoint} (it supports {supported})."
        return None
