"""The admin API: keys and usage, for admin-scoped keys only.

An admin key manages its own owner's keys and reads its own owner's usage; another owner's keys
are 404 to it. The operator manages every owner with the CLI, which works on the database directly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from server.auth.dependencies import Context, require_scope
from server.auth.keys import ADMIN_SCOPE, MAX_LIMIT, GrantError, KeyAdminError
from server.db.models import ApiKey
from server.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from server.protocol import OpenAIBaseModel
from server.routing import ApiRoute
from server.state import services

_LAST_EPOCH = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime holds

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[require_scope(ADMIN_SCOPE)], route_class=ApiRoute)


class CreateKeyRequest(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=200)
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    plan: str = Field(default="free", max_length=64)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    scopes: list[str] | None = Field(default=None, max_length=16)
    models: list[str] | None = Field(default=None, max_length=256)
    admin: bool = False
    operator: bool = False


def _epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


def key_object(key: ApiKey) -> dict:
    return {"id": key.id, "object": "api_key", "name": key.name, "owner": key.owner, "plan": key.plan,
            "prefix": key.prefix, "scopes": key.scopes, "models": key.models, "rpm": key.rpm, "tpm": key.tpm,
            "created_at": _epoch(key.created_at), "last_used_at": _epoch(key.last_used_at),
            "revoked_at": _epoch(key.revoked_at)}


def _visible(context, owner: str | None) -> bool:
    return context.caller is None or owner == context.caller.owner


@router.post("/keys", status_code=201)
async def create_key(body: CreateKeyRequest, request: Request, context: Context) -> JSONResponse:
    fields = body.model_dump()
    if context.caller is not None:
        if fields["owner"] not in (None, context.caller.owner):
            raise PermissionDeniedError("An admin key makes keys for its own owner only; use `ozwell keys create` "
                                        "for other owners.", param="owner", code="insufficient_scope")
        fields["owner"] = context.caller.owner
    try:
        record, plaintext = await asyncio.to_thread(services(request).keys.create, **fields, grantor=context.caller)
    except GrantError as exc:
        raise PermissionDeniedError(str(exc), param=exc.param, code="insufficient_scope") from None
    except KeyAdminError as exc:
        raise InvalidRequestError(str(exc), code="invalid_value") from None
    # The only time the key is shown.
    return JSONResponse({**key_object(record), "key": plaintext}, status_code=201)


@router.get("/keys")
async def list_keys(request: Request, context: Context) -> dict:
    keys = await asyncio.to_thread(services(request).keys.list)
    return {"object": "list", "data": [key_object(k) for k in keys if _visible(context, k.owner)]}


def _owned_key(request: Request, context, key_id: str) -> ApiKey | None:
    return next((k for k in services(request).keys.list() if k.id == key_id and _visible(context, k.owner)), None)


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, context: Context) -> dict:
    key = None
    if await asyncio.to_thread(_owned_key, request, context, key_id) is not None:  # by id only here
        key = await asyncio.to_thread(services(request).keys.revoke, key_id)
    if key is None:
        raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id", code="key_not_found")
    return {**key_object(key), "revoked": True}


@router.get("/usage")
async def read_usage(request: Request, context: Context, key_id: str | None = None,
                     since: int | None = Query(default=None, ge=0, le=_LAST_EPOCH, description="epoch seconds"),
                     limit: int = Query(default=1000, ge=1, le=10000)) -> dict:
    if key_id is not None and await asyncio.to_thread(_owned_key, request, context, key_id) is None:
        raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id", code="key_not_found")
    since_dt = datetime.fromtimestamp(since, UTC) if since is not None else None
    owner = None if context.caller is None else context.caller.owner
    rows = await asyncio.to_thread(services(request).usage.query, key_id, since_dt, limit, owner)
    return {"object": "list", "data": rows}
