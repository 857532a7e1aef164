"""Serving API: one customer's live state by any of their identifiers (see docs/serving.md)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api")
