"""Serving API: one customer's live state by any of their identifiers, and the experiment loop.

Everything under ``/api`` needs ``Authorization: Bearer <token>`` with a token from
``serving.tokens``. Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status (see
docs/serving.md); nothing of the server's internals is ever in a response.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from processors.experiments import (
    Assignment,
    Intervention,
    analyse,
    assign_variant,
)
from processors.identity import KIND_OF_CODE, IdentityResolver
from sinks.serving import AsyncServingReader, Found
from streams.settings import Settings

router = APIRouter(prefix="/api")

CUSTOMER_ID: Final = re.compile(r"^c_[0-9a-f]{16}$")
HASH: Final = re.compile(r"^[0-9a-f]{64}$")
NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
TOUCHPOINT: Final = r"^[a-z][a-z0-9_]{0,63}$"
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
MAX_IDENTIFIER: Final = 512
Kind = Literal["anonymous_id", "device_id", "user_id", "email", "crm_id", "customer_id"]
Role = Literal["reader", "pii", "writer"]


class ApiError(Exception):
    """An error the client caused (or a dependency that is down): status, code, message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


# -- auth -------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A token from `serving.tokens`.")
_RANK: Final = {"reader": 0, "pii": 1, "writer": 2}


class Caller(BaseModel):
    name: str
    role: Role


def _caller(request: Request, creds: HTTPAuthorizationCredentials | None) -> Caller:
    if creds is None:
        raise ApiError(401, "missing_token", "send `Authorization: Bearer <token>`",
                       {"WWW-Authenticate": "Bearer"})
    settings: Settings = request.app.state.settings
    given = creds.credentials.encode()
    match: Caller | None = None
    for token in settings.serving.tokens:  # compare with every token: no timing hint
        if hmac.compare_digest(given, token.token.get_secret_value().encode()):
            match = Caller(name=token.name, role=token.role)
    if match is None:
        raise ApiError(401, "invalid_token", "the bearer token is not valid",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return match


def _authorize(request: Request, role: Role) -> Caller:
    """The bearer check without FastAPI's dependency machinery (same rules as `_require`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    creds = (HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())
             if scheme.lower() == "bearer" and token.strip() else None)
    caller = _caller(request, creds)
    if _RANK[caller.role] < _RANK[role]:
        raise ApiError(403, "forbidden", f"this needs a token with the {role!r} role")
    return caller


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _require(role: Role) -> Any:
    # async: no thread hop; `creds` only declares the bearer scheme in the OpenAPI description
    async def check(request: Request, creds: Credentials) -> Caller:
        return _authorize(request, role)

    return check


AsReader = Annotated[Caller, Depends(_require("reader"))]
AsWriter = Annotated[Caller, Depends(_require("writer"))]


# -- resources ----------------------------------------------------------------------------------


def _reader(request: Request) -> AsyncServingReader:
    reader: AsyncServingReader | None = getattr(request.app.state, "serving_reader", None)
    if reader is None:
        from streams.serve import identity_prefix, serving_prefix

        settings: Settings = request.app.state.settings
        reader = AsyncServingReader(
            settings.redis.url, serving_prefix(settings), identity_prefix(settings)
        )
        request.app.state.serving_reader = reader
    return reader


def _resolver(request: Request) -> IdentityResolver:
    """A fresh resolver per request, for its hashing only: a shared one would cache every value
    callers send (up to a million), which a caller could fill with junk."""
    config = getattr(request.app.state, "processing", None)
    if config is None:
        config = request.app.state.processing = request.app.state.settings.processing()
    return IdentityResolver(config.identity, config.identity_salt)


def _clickhouse(request: Request) -> Any:
    state = request.app.state
    # the dashboard's store when `journeymap dashboard` opened one, else one of our own
    store = getattr(state, "dashboard_store", None) or getattr(state, "clickhouse_store", None)
    if store is None:
        from sinks import clickhouse as ch

        store = ch.connect(request.app.state.settings.clickhouse)
        ch.check_schema(store)
        request.app.state.clickhouse_store = store
    return store


# -- customers ----------------------------------------------------------------------------------


class FunnelStage(BaseModel):
    funnel: str
    stage: str
    stage_index: int
    stage_entered_at: datetime
    time_in_stage_s: float = Field(description="From entering the stage to the latest event.")


class Feature(BaseModel):
    feature: str
    weight: float


class Identifier(BaseModel):
    kind: str
    hash: str = Field(description="Salted SHA-256 of the normalized identifier.")


class CustomerState(BaseModel):
    """One customer's live state. `scored` is false when the customer is known (their
    identifiers are linked) but the models have not scored an event of theirs yet."""

    customer_id: str
    scored: bool
    segment: str | None = None
    funnels: list[FunnelStage] = []
    p_convert: float | None = None
    p_churn: float | None = None
    top_features: list[Feature] = []
    next_best_action: str | None = None
    expected_lift: float | None = None
    sentiment: str | None = None
    last_event_at: datetime | None = None
    updated_at: datetime | None = None
    identifiers: list[Identifier] = Field(
        default=[], description="Hashed only: journeymap never stores raw identifiers."
    )


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        401: "missing or invalid token", 403: "the token's role is not enough",
        404: "unknown identifier", 422: "malformed request", 503: "Redis or ClickHouse down",
    }.items()
}


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


_UNSCORED: Final[dict[str, Any]] = {
    "scored": False, "segment": None, "funnels": [], "p_convert": None, "p_churn": None,
    "top_features": [], "next_best_action": None, "expected_lift": None, "sentiment": None,
    "last_event_at": None, "updated_at": None,
}


def _present(found: Found) -> dict[str, Any]:
    ids = [{"kind": KIND_OF_CODE.get(k[:1], "unknown"), "hash": k[1:]} for k in found.node_keys]
    s = found.state
    if s is None:
        return {**_UNSCORED, "customer_id": found.customer_id, "identifiers": ids}
    return {
        "customer_id": found.customer_id,
        "scored": True,
        "segment": s.get("segment"),
        "funnels": [
            {
                "funnel": f["funnel"], "stage": f["stage"], "stage_index": f["stage_index"],
                "stage_entered_at": _iso(f["stage_entered_at_ms"]),
                "time_in_stage_s": f["time_in_stage_s"],
            }
            for f in s.get("funnels", [])
        ],
        "p_convert": s.get("p_convert"),
        "p_churn": s.get("p_churn"),
        "top_features": s.get("top_features", []),
        "next_best_action": s.get("next_best_action"),
        "expected_lift": s.get("expected_lift"),
        "sentiment": s.get("sentiment"),
        "last_event_at": _iso(s.get("last_event_at_ms")),
        "updated_at": _iso(s.get("updated_at_ms")),
        "identifiers": ids,
    }


def node_key_for(resolver: IdentityResolver, kind: str, value: str, hashed: bool) -> str:
    """The identity graph's node key of an identifier, or ApiError(422) saying what is wrong."""
    if not value.strip() or len(value) > MAX_IDENTIFIER or _CONTROL.search(value):
        raise ApiError(422, "malformed_identifier",
                       f"a {kind} must be 1-{MAX_IDENTIFIER} printable characters")
    if hashed:
        if not HASH.match(value):
            raise ApiError(422, "malformed_identifier",
                           "with hashed=true the value must be 64 lowercase hex characters "
                           "(the salted SHA-256 that identity_links holds)")
        return resolver.key_of(kind, "x")[:1] + value  # type: ignore[index]
    key = resolver.key_of(kind, value)
    if key is None:
        raise ApiError(422, "placeholder_identifier",
                       f"this {kind} is a placeholder value that is never linked to anyone")
    return key


async def _find(request: Request, kind: str, value: str, hashed: bool) -> Found:
    if kind == "customer_id":
        if not CUSTOMER_ID.match(value):
            raise ApiError(422, "malformed_identifier",
                           "a customer_id is 'c_' followed by 16 lowercase hex characters")
        found = await _reader(request).find(customer_id=value)
    else:
        key = node_key_for(_resolver(request), kind, value, hashed)
        found = await _reader(request).find(node_key=key)
    if found is None:
        raise ApiError(404, "unknown_identifier", f"no customer is known by this {kind}")
    return found


@router.get(
    "/customers/{kind}/{value}",
    summary="A customer's live state by any identifier",
    response_model=CustomerState,
    responses=ERRORS,
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def get_customer(
    request: Request,
    kind: Annotated[Kind, Path(description="Which identifier `value` is.")],
    value: Annotated[str, Path(description="The raw identifier (normalized and hashed with the "
                                           "configured salt, exactly as the resolver does), a "
                                           "customer id, or a hash with hashed=true.")],
    hashed: Annotated[bool, Query(description="`value` is already the salted SHA-256.")] = False,
) -> Response:
    """Segment, funnel stages and time in stage, conversion and churn scores, the features that
    explain them, the next-best action with its expected lift, and the customer's hashed
    identifiers, from the serving state the workers keep in Redis."""
    # the hot path checks the token inline: a dependency costs more than the check itself
    _authorize(request, "reader")
    if kind == "customer_id" and hashed:
        raise ApiError(422, "invalid_request", "hashed=true does not apply to customer_id")
    found = await _find(request, kind, value, hashed)
    return Response(orjson.dumps(_present(found)), media_type="application/json")


# -- experiments --------------------------------------------------------------------------------


class InterventionIn(BaseModel):
    """What changed, when and for whom; with `experiment`, `variants` and `control` an A/B
    test."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=5000)] = ""
    segment: Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9_.\-]{1,64})$")] = "*"
    channel: Annotated[str, Field(pattern=r"^(\*|[a-z]{1,32})$")] = "*"
    experiment: Annotated[str, Field(pattern=r"^([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})?$")] = ""
    variants: list[Annotated[str, Field(pattern=NAME)]] = []
    control: str = ""
    outcome_touchpoints: list[Annotated[str, Field(pattern=TOUCHPOINT)]] = []
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    planned_n_per_variant: Annotated[int, Field(ge=0, le=10**9)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> InterventionIn:
        if self.ended_at is not None and self.ended_at <= self.started_at:
            raise ValueError("ended_at must be after started_at")
        if self.experiment:
            if len(self.variants) < 2 or len(set(self.variants)) != len(self.variants):
                raise ValueError("an experiment needs at least two distinct variants")
            if self.control not in self.variants:
                raise ValueError("control must be one of the variants")
            if not self.outcome_touchpoints:
                raise ValueError("an experiment needs outcome_touchpoints (what counts as success)")
        elif self.variants or self.control:
            raise ValueError("variants and control need an experiment name")
        return self

    def to_intervention(self, created_by: str, now_ms: int) -> Intervention:
        return Intervention(
            intervention_id=uuid.uuid4().hex, name=self.name, description=self.description,
            segment=self.segment, channel=self.channel, experiment=self.experiment,
            variants=tuple(self.variants), control=self.control,
            outcome_touchpoints=tuple(self.outcome_touchpoints),
            started_at_ms=int(self.started_at.timestamp() * 1000),
            ended_at_ms=None if self.ended_at is None else int(self.ended_at.timestamp() * 1000),
            planned_n_per_variant=self.planned_n_per_variant, created_at_ms=now_ms,
            created_by=created_by,
        )


ExperimentName = Annotated[str, Path(pattern=NAME, description="The experiment's name.")]


def _experiment(store: Any, experiment: str) -> tuple[Intervention, list[Intervention]]:
    from sinks import experiments as xs

    every = xs.interventions(store)
    mine = [i for i in every if i.experiment == experiment]
    if not mine:
        raise ApiError(404, "unknown_experiment", "no intervention names this experiment")
    return mine[-1], every


@router.post("/experiments/interventions", status_code=201, summary="Record an intervention",
             responses=ERRORS)
def post_intervention(request: Request, body: InterventionIn,
                      caller: AsWriter) -> dict[str, Any]:
    from sinks import experiments as xs

    iv = body.to_intervention(caller.name, int(time.time() * 1000))
    store = _clickhouse(request)
    xs.record_intervention(store, iv)
    others = [o.name for o in xs.interventions(store) if iv.overlaps(o)]
    return {"intervention_id": iv.intervention_id, "overlapping": others}


@router.get("/experiments/interventions", summary="Every intervention", responses=ERRORS)
def list_interventions(request: Request, caller: AsReader) -> list[dict]:
    from sinks import experiments as xs

    return [
        {**i.as_row(), "started_at": _iso(i.started_at_ms), "ended_at": _iso(i.ended_at_ms),
         "created_at": _iso(i.created_at_ms)}
        for i in xs.interventions(_clickhouse(request))
    ]


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    value: Annotated[str, Field(min_length=1, max_length=MAX_IDENTIFIER)]
    hashed: bool = False


@router.post("/experiments/{experiment}/assign", summary="A customer's variant (assigned once)",
             responses=ERRORS)
async def post_assign(request: Request, experiment: ExperimentName, body: AssignIn,
                      caller: AsWriter) -> dict[str, Any]:
    """The variant of the customer behind the identifier: a stable hash of (experiment,
    customer), recorded in `experiment_assignments` the first time."""
    import asyncio

    from sinks import experiments as xs

    found = await _find(request, body.kind, body.value, body.hashed)
    store = _clickhouse(request)
    iv, _ = await asyncio.to_thread(_experiment, store, experiment)
    cid = found.customer_id
    before = await asyncio.to_thread(xs.assigned, store, experiment, [cid])
    if cid in before:
        return {"customer_id": cid, "variant": before[cid], "new": False}
    variant = assign_variant(experiment, cid, iv.variants)
    segment = (found.state or {}).get("segment") or "all"
    now_ms = max(int(time.time() * 1000), iv.started_at_ms)
    await asyncio.to_thread(xs.record_assignments, store,
                            [Assignment(experiment, cid, variant, segment, now_ms)])
    return {"customer_id": cid, "variant": variant, "new": True}


@router.get("/experiments/{experiment}/results", summary="Outcome analysis", responses=ERRORS)
def get_results(
    request: Request,
    caller: AsReader,
    experiment: ExperimentName,
    alpha: Annotated[float, Query(gt=0, lt=0.5)] = 0.05,
    power: Annotated[float, Query(gt=0.5, lt=1)] = 0.8,
    mde: Annotated[float, Query(gt=0, lt=1, description="Absolute lift to detect.")] = 0.02,
) -> dict[str, Any]:
    """Each variant against the control, per segment and overall (`*`): rates, difference with
    its confidence interval, z, p-value (Bonferroni over the variants), the customers per variant
    the MDE needs, and warnings on peeking and overlapping interventions."""
    from sinks import experiments as xs

    store = _clickhouse(request)
    iv, every = _experiment(store, experiment)
    report = analyse(iv, xs.outcomes(store, experiment), every, alpha=alpha, power=power, mde=mde)
    return {
        "experiment": experiment,
        "intervention": iv.name,
        "control": iv.control,
        "warnings": list(report.warnings),
        "comparisons": [
            {k: v for k, v in c.as_row(experiment, 0).items() if k not in ("experiment", "as_of")}
            for c in report.comparisons
        ],
    }

