"""Dashboard: live views over the analyst tables (see docs/dashboard.md)."""

from fastapi import APIRouter

router = APIRouter()
