"""API keys: made once by ``medgen serve create-key``, kept only as SHA-256 hashes, checked on every request.

A key is 32 random bytes (``mg_`` + URL-safe base64), so a plain SHA-256 is enough at rest: there is nothing to
brute-force that a slow password hash would protect. The key travels as ``X-API-Key: <key>`` or
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import secrets

from fastapi import HTTPException, Request, status

from medgen.serve.jobs import JobStore, KeyRecord

KEY_PREFIX = "mg_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store: JobStore, name: str, max_jobs: int) -> str:
    """Store a new key's hash and return the key (the only time it is seen)."""
    if not name or len(name) > 100:
        raise ValueError("key name must be 1-100 characters")
    if max_jobs < 1:
        raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.add_key(KeyRecord(id=secrets.token_hex(8), name=name, key_hash=hash_key(key), max_jobs=max_jobs))
    return key


def key_from_headers(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def require_key(request: Request) -> KeyRecord:
    """FastAPI dependency: the caller's key record, or 401."""
    key = key_from_headers(request)
    challenge = {"WWW-Authenticate": 'Bearer realm="medgen"'}
    if key is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send X-API-Key or Authorization: "
                            "Bearer (create one with `medgen serve create-key NAME`)", headers=challenge)
    record = request.app.state.store.key_by_hash(hash_key(key))
    if record is None or record.revoked:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers=challenge)
    return record
