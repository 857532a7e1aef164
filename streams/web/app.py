"""One FastAPI app for the dashboard (`streams.web.dashboard`) and the serving API
(`streams.web.api`). Each module exposes an `APIRouter` named `router`; this file wires them,
closes what they opened on shutdown, and turns errors under ``/api`` into JSON
``{"error": {"code", "message"}}`` bodies that never carry a stack trace or internal detail."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from processors.errors import SchemaError, ServiceError
from streams.settings import Settings

log = logging.getLogger("journeymap.web")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _is_api(request: Request) -> bool:
    return request.url.path == "/api" or request.url.path.startswith("/api/")


def _install_error_handlers(app: FastAPI) -> None:
    from streams.web.api import ApiError

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if not _is_api(request):
            return await http_exception_handler(request, exc)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {
            404: "no such endpoint; see /docs or /openapi.json",
            405: "this endpoint does not take that method",
        }.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if not _is_api(request):
            return await request_validation_exception_handler(request, exc)
        # Say where and what, never echo the input back.
        problems = [
            {"where": ".".join(str(p) for p in err.get("loc", ())),
             "problem": str(err.get("msg", "invalid")).removeprefix("Value error, ")}
            for err in exc.errors()
        ]
        first = problems[0] if problems else {"where": "request", "problem": "invalid"}
        body = {"error": {"code": "invalid_request",
                          "message": f"{first['where']}: {first['problem']}",
                          "problems": problems}}
        return JSONResponse(body, 422)

    @app.exception_handler(SchemaError)
    async def schema(request: Request, exc: SchemaError) -> Response:
        log.error("schema: %s", exc)
        return _error(503, "schema_not_ready",
                      "the ClickHouse schema is not at this version; run `journeymap migrate`")

    @app.exception_handler(ServiceError)
    async def unavailable(request: Request, exc: ServiceError) -> Response:
        log.error("a backing service failed: %s", exc)
        return _error(503, "service_unavailable",
                      "Redis or ClickHouse did not answer; try again shortly")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if _is_api(request):
            return _error(500, "internal_error", "internal error; the server log has the details")
        return PlainTextResponse("internal error", 500)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    reader: Any = getattr(app.state, "serving_reader", None)
    if reader is not None:
        await reader.close()
    store: Any = getattr(app.state, "clickhouse_store", None)
    if store is not None:
        store.close()


def create_app(settings: Settings) -> FastAPI:
    from streams.web import api, dashboard

    app = FastAPI(
        title="journeymap",
        summary="Live customer-journey dashboard and serving API.",
        description="Serving API: see docs/serving.md; experiments: docs/experiments.md.",
        version="1",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(dashboard.router)
    return app
