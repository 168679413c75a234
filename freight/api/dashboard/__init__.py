"""The dashboard at ``/dashboard`` (docs/dashboard.md): server-rendered pages, one small script."""

from freight.api.dashboard.routes import router

__all__ = ["router"]
