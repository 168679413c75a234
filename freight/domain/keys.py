"""API keys and projects.

A key looks like ``frk_<id>_<secret>``: ``id`` (12 hex digits) names the key and is safe to show
and log; ``secret`` (256 random bits) is shown once, when the key is made, and only its sha256
is kept. A presented key is checked by looking its id up and comparing the sha256 of its secret
with the stored one in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "frk_"
_KEY_RE = re.compile(r"^frk_([a-f0-9]{12})_([A-Za-z0-9_-]{43})$")
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: The project of every request while no key exists (a loopback-only server).
DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class ApiKey:
    id: str
    project: str
    created_at: int
    revoked_at: int | None = None


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    #: The full key to hand to the user, once.
    token: str
    secret_hash: str


def check_project(name: str) -> str:
    if not PROJECT_RE.match(name):
        raise ValueError(
            f"invalid project name {name!r}: 1-64 characters, letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
    return name


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(project: str, created_at: int) -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    assert len(secret) == 43
    return NewKey(ApiKey(key_id, check_project(project), created_at), f"{KEY_PREFIX}{key_id}_{secret}",
                  hash_secret(secret))


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
