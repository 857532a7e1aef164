"""One FastAPI app for the dashboard (`streams.web.dashboard`) and the serving API
(`streams.web.api`). Each module exposes an `APIRouter` named `router`; this file only wires them."""

from __future__ import annotations

from fastapi import FastAPI

from streams.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    from streams.web import api, dashboard

    app = FastAPI(
        title="journeymap",
        summary="Live customer-journey dashboard and serving API.",
        version="1",
    )
    app.state.settings = settings
    app.include_router(api.router)
    app.include_router(dashboard.router)
    return app
