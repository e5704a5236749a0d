"""The admin API: keys and usage, for admin-scoped keys only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from server.auth.dependencies import require_scope
from server.auth.keys import ADMIN_SCOPE, KeyAdminError
from server.db.models import ApiKey
from server.errors import InvalidRequestError, NotFoundError
from server.protocol import OpenAIBaseModel

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[require_scope(ADMIN_SCOPE)])


class CreateKeyRequest(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=200)
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    plan: str = "free"
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    scopes: list[str] | None = None
    models: list[str] | None = None
    admin: bool = False


def _epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


def key_object(key: ApiKey) -> dict:
    return {"id": key.id, "object": "api_key", "name": key.name, "owner": key.owner, "plan": key.plan,
            "prefix": key.prefix, "scopes": key.scopes, "models": key.models, "rpm": key.rpm, "tpm": key.tpm,
            "created_at": _epoch(key.created_at), "last_used_at": _epoch(key.last_used_at),
            "revoked_at": _epoch(key.revoked_at)}


@router.post("/keys", status_code=201)
async def create_key(body: CreateKeyRequest, request: Request) -> JSONResponse:
    try:
        record, plaintext = await asyncio.to_thread(request.app.state.keys.create, **body.model_dump())
    except KeyAdminError as exc:
        raise InvalidRequestError(str(exc), code="invalid_value") from None
    # The only time the key is shown.
    return JSONResponse({**key_object(record), "key": plaintext}, status_code=201)


@router.get("/keys")
async def list_keys(request: Request) -> dict:
    keys = await asyncio.to_thread(request.app.state.keys.list)
    return {"object": "list", "data": [key_object(k) for k in keys]}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict:
    key = None
    if key_id.startswith("key_"):  # by id only here; the CLI also takes a prefix
        key = await asyncio.to_thread(request.app.state.keys.revoke, key_id)
    if key is None:
        raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id", code="key_not_found")
    return {**key_object(key), "revoked": True}


@router.get("/usage")
async def read_usage(request: Request, key_id: str | None = None,
                     since: int | None = Query(default=None, description="epoch seconds"),
                     limit: int = Query(default=1000, ge=1, le=10000)) -> dict:
    since_dt = datetime.fromtimestamp(since, UTC) if since is not None else None
    rows = await asyncio.to_thread(request.app.state.usage.query, key_id, since_dt, limit)
    return {"object": "list", "data": rows}
