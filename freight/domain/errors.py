"""Errors of freight's own making (failures of one request are data, not exceptions).

The tree::

    FreightError
    ├── InvalidInput        the caller sent something wrong (HTTP 400)
    ├── NotFound            no such file or batch for this caller (HTTP 404)
    ├── Conflict            the object is in a state that forbids the operation (HTTP 409)
    ├── PayloadTooLarge     an upload or body is over its configured limit (HTTP 413)
    ├── Unauthorized        no API key, or not a valid one (HTTP 401)
    ├── RateLimited         a per-project limit is reached; try again later (HTTP 429)
    ├── ConfigError         freight.toml or a setting is wrong (startup)
    ├── BackendError        a backend could not run a request (retried by the engine)
    └── StoreError          the store failed (disk full, locked, corrupt)
        └── InsufficientStorage  no space left for a write (HTTP 507; nothing was stored)
"""

from __future__ import annotations


class FreightError(Exception):
    """Something went wrong inside freight."""

    status_code = 500
    error_type = "server_error"
    #: Whether a 5xx's message may be shown to the client (otherwise a generic one is).
    public = False

    def __init__(self, message: str | None = None, *, param: str | None = None, code: str | None = None):
        self.message = message or (self.__doc__ or "").strip()
        self.param = param
        self.code = code
        super().__init__(self.message)


class InvalidInput(FreightError):
    """The request is invalid."""

    status_code = 400
    error_type = "invalid_request_error"


class NotFound(FreightError):
    """No such object."""

    status_code = 404
    error_type = "invalid_request_error"


class Conflict(FreightError):
    """The object's current state does not allow this operation."""

    status_code = 409
    error_type = "invalid_request_error"


class Unprocessable(FreightError):
    """Well-formed, but refused as it stands (an idempotency key reused for a different request)."""

    status_code = 422
    error_type = "invalid_request_error"


class PayloadTooLarge(FreightError):
    """The upload is larger than the configured limit."""

    status_code = 413
    error_type = "invalid_request_error"


class Unauthorized(FreightError):
    """No valid API key was provided."""

    status_code = 401
    error_type = "authentication_error"


class RateLimited(FreightError):
    """A limit of this project is reached; try again later."""

    status_code = 429
    error_type = "rate_limit_error"


class ConfigError(FreightError):
    """The configuration is invalid."""


class BackendError(FreightError):
    """A backend failed to execute a request; the engine treats it as transient."""

    status_code = 502


class StoreError(FreightError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The server's file store did not answer (an S3 endpoint down or refusing); try again later."""

    status_code = 503
    public = True


class InsufficientStorage(StoreError):
    """The server has no space left to store this; nothing was stored."""

    status_code = 507
    #: Safe to show the client: it says what happened, nothing about the server's insides.
    public = True
