"""Which model names this freight serves, on which backend, for which endpoints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from freight.ports import Backend, ModelInfo


@dataclass(frozen=True)
class ServedModel:
    info: ModelInfo
    backend: Backend


class ModelCatalog:
    def __init__(self, backends: Iterable[Backend]):
        self.backends: list[Backend] = list(backends)
        self._models: dict[str, ServedModel] = {}
        for backend in self.backends:
            for info in backend.models():
                if info.id in self._models:
                    raise ValueError(f"model {info.id!r} is served by two backends")
                self._models[info.id] = ServedModel(info, backend)

    def __contains__(self, model: str) -> bool:
        return model in self._models

    def models(self) -> list[ModelInfo]:
        return [m.info for m in self._models.values()]

    def backend_for(self, model: str) -> Backend | None:
        served = self._models.get(model)
        return served.backend if served else None

    def check(self, model: str, endpoint: str) -> str | None:
        """None when ``model`` is served for ``endpoint``; else why not, for a model_not_found error."""
        served = self._models.get(model)
        if served is None:
            names = ", ".join(sorted(self._models)) or "none"
            return f"The provided model {model!r} is not served by this freight (served: {names})."
        if endpoint not in served.info.endpoints:
            supported = ", ".join(sorted(served.info.endpoints))
            return f"The model {model!r} does not support {endpoint} (it supports {supported})."
        return None
