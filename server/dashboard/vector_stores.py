"""The dashboard's Vector stores pages: the signed-in owner's stores, each store's files with their indexing status
and last error, and deleting a store or taking a file out of one. They call the API's VectorStoreService as the
owner (another owner's store is a 404 here too), and their forms pass the same CSRF and Origin checks as every
other dashboard form (app.py's `posted`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import NotFoundError
from server.state import AppServices

PATH = "/dashboard"
LISTED = 100  # stores and files shown per page (an owner may hold 100 stores; a store up to 10,000 files)


def _with_filenames(services: AppServices, owner: str, files: list[dict]) -> list[dict]:
    """The store's file objects (OpenAI's carry no filename) with the uploads' names beside them (blocking)."""
    named = []
    for file in files:
        try:
            filename = services.files.get(owner, file["id"]).filename
        except NotFoundError:  # the upload went while the page was being made
            filename = None
        named.append({**file, "filename": filename})
    return named


def add_vector_store_pages(app: FastAPI, services: AppServices, page: Callable[..., Response],
                           signed_in: Callable[[Request], Awaitable], posted: Callable[..., Awaitable]) -> None:
    def stores_service():
        if services.vector_stores is None:  # no database: the dashboard has no sessions either, so never here
            raise StarletteHTTPException(404)
        return services.vector_stores

    @app.get("/vector_stores")
    async def vector_stores(request: Request) -> Response:
        user = await signed_in(request)
        listing = await asyncio.to_thread(stores_service().list, user.caller.owner, LISTED, "desc", None, None)
        return page(request, "vector_stores.html", user=user, section="vector_stores", stores=listing["data"],
                    more_stores=listing["has_more"])

    @app.get("/vector_stores/{store_id}")
    async def vector_store(store_id: str, request: Request) -> Response:
        user = await signed_in(request)
        owner, stores = user.caller.owner, stores_service()
        try:
            store = await asyncio.to_thread(stores.retrieve, owner, store_id)
            listing = await asyncio.to_thread(stores.store_files.list_files, owner, store_id, LISTED, "desc", None,
                                              None, None)
        except NotFoundError:
            raise StarletteHTTPException(404) from None
        files = await asyncio.to_thread(_with_filenames, services, owner, listing["data"])
        return page(request, "vector_store.html", user=user, section="vector_stores", store=store, files=files,
                    more_files=listing["has_more"])

    @app.post("/vector_stores/{store_id}/delete")
    async def delete_vector_store(store_id: str, request: Request) -> Response:
        user = await signed_in(request)
        await posted(request, user)
        try:
            await asyncio.to_thread(stores_service().delete, user.caller.owner, store_id)
        except NotFoundError:
            raise StarletteHTTPException(404) from None
        return RedirectResponse(f"{PATH}/vector_stores", status_code=303)

    @app.post("/vector_stores/{store_id}/files/{file_id}/delete")
    async def remove_vector_store_file(store_id: str, file_id: str, request: Request) -> Response:
        user = await signed_in(request)
        await posted(request, user)
        try:
            await asyncio.to_thread(stores_service().store_files.delete_file, user.caller.owner, store_id, file_id)
        except NotFoundError:
            raise StarletteHTTPException(404) from None
        return RedirectResponse(f"{PATH}/vector_stores/{store_id}", status_code=303)
