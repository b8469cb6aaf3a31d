"""Usage: ``GET /v1/usage`` (a tenant's own) and ``GET /v1/operator/usage``.

``kind`` picks what: ``inference`` (the default, so callers from before the other kinds get
what they always got), or the metered ``compute``, ``storage`` and ``builds``
(``control.api.usage_metered``). Every answer carries its ``kind``.

Inference usage is aggregated by day (UTC) and model with totals; ``detail=true`` adds the per-request rows
(paged with ``limit``/``cursor``). Token counts are what the engine reported; a request
whose engine said nothing (a broken stream) carries an estimate, flagged
``usage_reported: false``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from control.api.endpoints import Cursor, Limit, endpoint
from control.api.usage_metered import BuildUsageOut, ComputeUsageOut, StorageUsageOut, metered_out
from control.domain.errors import Forbidden
from control.domain.inference import Inference
from control.domain.metered_usage import MeteringService
from control.domain.records import UsageRecord
from control.domain.usage import UsageSummary, day_window
from control.security.principal import Principal
from control.security.scopes import OPERATOR_ACCESS, USAGE_ACCESS, KeyScope

Since = QueryParameter(description="First day (UTC, YYYY-MM-DD); default: 30 days before `until`.", required=False)
Until = QueryParameter(description="Last day, inclusive (UTC, YYYY-MM-DD); default: today.", required=False)
Detail = QueryParameter(description="Also return the per-request rows (paged).", required=False)
TenantFilter = QueryParameter(description="Only this tenant.", required=False)
KindParam = QueryParameter(
    description="What to report: `inference` (tokens, by day and model; the default), `compute` (CPU-seconds, memory, "
    "network, block I/O by hour), `storage` (volumes, database volumes, images, backups by hour), `builds` (build "
    "seconds by hour and per deployment). Tenant keys: `inference` needs `inference` or `read`, the others `read`.",
    required=False,
)
Kind = Literal["inference", "compute", "storage", "builds"]


class UsageBucketOut(msgspec.Struct, omit_defaults=True):
    day: str
    model: str
    requests: int
    errors: Annotated[int, msgspec.Meta(description="Requests that did not end `ok`")]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    tenant_id: str | None = None  # operator view only


class UsageTotalsOut(msgspec.Struct):
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageRowOut(msgspec.Struct):
    id: str
    tenant_id: str
    api_key_id: str
    request_id: str
    model: str
    node_id: str | None
    endpoint: str
    stream: bool
    status: Annotated[
        str,
        msgspec.Meta(
            description="ok | error | rejected (engine 4xx) | cancelled (client left) | stalled (client stopped reading; cut off)"
        ),
    ]
    http_status: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reserved_tokens: Annotated[int, msgspec.Meta(description="Reserved at admission: prompt estimate + max_tokens")]
    usage_reported: Annotated[bool, msgspec.Meta(description="false: the engine reported nothing; tokens estimated")]
    latency_ms: int
    ttft_ms: Annotated[int | None, msgspec.Meta(description="Time to the first token (streams only)")]
    created_at: datetime

    @classmethod
    def of(cls, record: UsageRecord) -> UsageRowOut:
        fields = {name: getattr(record, name) for name in cls.__struct_fields__ if name != "total_tokens"}
        return cls(**fields, total_tokens=record.total_tokens)


class UsageOut(msgspec.Struct, tag_field="kind", tag="inference"):
    since: date
    until: date
    items: Annotated[list[UsageBucketOut], msgspec.Meta(description="Per day and model")]
    totals: UsageTotalsOut
    rows: list[UsageRowOut] | None = None
    next_cursor: str | None = None


def _report(
    inference: Inference,
    tenant_id: str | None,
    since: date | None,
    until: date | None,
    *,
    detail: bool,
    limit: int,
    cursor: str | None,
    per_tenant: bool,
) -> UsageOut:
    first, last = day_window(since, until, datetime.now(UTC).date())
    summary: UsageSummary = inference.usage.summary(tenant_id, first, last)
    items = [
        UsageBucketOut(
            day=b.day,
            model=b.model,
            requests=b.requests,
            errors=b.errors,
            prompt_tokens=b.prompt_tokens,
            completion_tokens=b.completion_tokens,
            total_tokens=b.prompt_tokens + b.completion_tokens,
            tenant_id=b.tenant_id if per_tenant else None,
        )
        for b in summary.buckets
    ]
    t = summary.totals
    out = UsageOut(
        since=first,
        until=last,
        items=items,
        totals=UsageTotalsOut(t.requests, t.errors, t.prompt_tokens, t.completion_tokens, t.total_tokens),
    )
    if detail:
        page = inference.usage.rows(tenant_id, first, last, limit=limit, cursor=cursor)
        out.rows = [UsageRowOut.of(r) for r in page.items]
        out.next_cursor = page.next_cursor
    return out


AnyUsageOut = UsageOut | ComputeUsageOut | StorageUsageOut | BuildUsageOut


def _metered(metering: MeteringService, kind: Kind, tenant_id: str | None, since: date | None, until: date | None,
             *, per_tenant: bool) -> AnyUsageOut:  # fmt: skip
    first, last = day_window(since, until, datetime.now(UTC).date())
    return metered_out(metering.report(kind, tenant_id, first, last), per_tenant=per_tenant)


@endpoint(
    "GET", "/v1/usage", access=USAGE_ACCESS, summary="Your tenant's usage: inference tokens, compute, storage or builds",
    tags=["usage"],
)  # fmt: skip
def tenant_usage(
    request: Request[Any, Principal, Any],
    caller_tenant: NamedDependency[str],
    inference: NamedDependency[Inference],
    metering: NamedDependency[MeteringService],
    kind: Annotated[Kind, KindParam] = "inference",
    since: Annotated[date | None, Since] = None,
    until: Annotated[date | None, Until] = None,
    detail: Annotated[bool, Detail] = False,
    limit: Annotated[int, Limit] = 50,
    cursor: Annotated[str | None, Cursor] = None,
) -> AnyUsageOut:
    if kind != "inference":
        if not request.user.allows(KeyScope.READ):
            raise Forbidden(
                f"Usage of kind '{kind}' needs the 'read' scope; key {request.user.key_id} has "
                f"{sorted(request.user.scopes)} (an `inference` key reads `kind=inference` only).",
                code="insufficient-scope",
            )
        return _metered(metering, kind, caller_tenant, since, until, per_tenant=False)
    return _report(  # a tenant id, never None here: None would mean every tenant
        inference, caller_tenant, since, until, detail=detail, limit=limit, cursor=cursor, per_tenant=False
    )


@endpoint(
    "GET", "/v1/operator/usage", access=OPERATOR_ACCESS,
    summary="Every tenant's usage (inference by day, tenant and model; compute, storage, builds by hour and tenant)",
    tags=["usage (operator)"],
)  # fmt: skip
def operator_usage(
    inference: NamedDependency[Inference],
    metering: NamedDependency[MeteringService],
    kind: Annotated[Kind, KindParam] = "inference",
    tenant_id: Annotated[str | None, TenantFilter] = None,
    since: Annotated[date | None, Since] = None,
    until: Annotated[date | None, Until] = None,
    detail: Annotated[bool, Detail] = False,
    limit: Annotated[int, Limit] = 50,
    cursor: Annotated[str | None, Cursor] = None,
) -> AnyUsageOut:
    if kind != "inference":
        return _metered(metering, kind, tenant_id, since, until, per_tenant=True)
    return _report(inference, tenant_id, since, until, detail=detail, limit=limit, cursor=cursor, per_tenant=True)


USAGE_ROUTES = [tenant_usage, operator_usage]
