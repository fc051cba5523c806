"""API keys: made once by ``medgen serve create-key``, kept only as SHA-256 hashes, checked on every request.

A key is 32 random bytes (``mg_`` + URL-safe base64), so a plain SHA-256 is enough at rest: there is nothing to
brute-force that a slow password hash would protect. The key travels as ``X-API-Key: <key>`` or
``Authorization: Bearer <key>``; both are declared to OpenAPI as security schemes (FastAPI's ``APIKeyHeader`` and
``HTTPBearer``, either one suffices), so ``/docs`` offers "Authorize" and sends the key with "Try it out".
"""

from __future__ import annotations

import hashlib
import secrets

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from medgen.serve.jobs import JobStore, KeyRecord

KEY_PREFIX = "mg_"
KEY_HELP = "API key from `medgen serve create-key NAME`"

#: the two ways to send a key, as OpenAPI security schemes; neither raises itself, :func:`require_key` does
api_key_header = APIKeyHeader(name="X-API-Key", scheme_name="APIKey", description=KEY_HELP, auto_error=False)
bearer = HTTPBearer(scheme_name="Bearer", description=KEY_HELP + ", as `Authorization: Bearer <key>`",
                    auto_error=False)


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


def require_key(
    request: Request,
    header_key: str | None = Security(api_key_header),
    bearer_key: HTTPAuthorizationCredentials | None = Security(bearer),
) -> KeyRecord:
    """FastAPI dependency: the caller's key record (``X-API-Key`` first, then ``Authorization: Bearer``), or 401."""
    key = (header_key or "").strip() or (bearer_key.credentials.strip() if bearer_key else "") or None
    challenge = {"WWW-Authenticate": 'Bearer realm="medgen"'}
    if key is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send X-API-Key or Authorization: "
                            "Bearer (create one with `medgen serve create-key NAME`)", headers=challenge)
    record = request.app.state.store.key_by_hash(hash_key(key))
    if record is None or record.revoked:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers=challenge)
    return record
