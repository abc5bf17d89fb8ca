"""The operator dashboard over HTTP: the success metrics of every server (or of one), per
day, with a chart. Operator keys only (`diffusion-chat apikey create NAME --operator`)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from api.accounts import Account
from api.context import ApiContext, ApiError, Caller, with_rate_headers
from api.schemas import ErrorBody
from core.charts import period_range, usage_chart
from core.storage.usage import ALL_SERVERS, UsageStats, merged, server_key

NOT_OPERATOR: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "the key is not an operator key"}
}
Period = Annotated[Literal["day", "week", "month"], Query(description="ending today (UTC)")]
Server = Annotated[
    str | None,
    Query(
        max_length=20,
        pattern=r"^(\d{1,20}|dm)$",
        description="one server's id, or `dm` for direct messages and the API; empty: all",
    ),
]


def _require_operator(account: Account) -> None:
    if not account.operator:
        raise ApiError(
            403,
            "forbidden",
            "The dashboard is for operators: use a key made with "
            "`diffusion-chat apikey create NAME --operator`.",
        )


def _key(server: str | None) -> int:
    if not server:
        return ALL_SERVERS
    return server_key(None if server == "dm" else int(server))


async def _days(
    request: Request, period: str, server: str | None
) -> list[tuple[dt.date, UsageStats]]:
    context: ApiContext = request.app.state.context
    first, last = period_range(period, dt.datetime.now(dt.UTC).date())
    days: list[tuple[dt.date, UsageStats]] = await context.service.db.usage.days(
        first, last, _key(server)
    )
    return days


def dashboard_routes() -> APIRouter:
    router = APIRouter(tags=["operators"])

    @router.get("/admin/usage", responses=NOT_OPERATOR)
    async def usage(
        request: Request, account: Caller, period: Period = "week", server: Server = None
    ) -> Response:
        """Generations, people, times (queue wait and generation apart), error and cancel
        rates by reason, advanced settings, favourites, buttons and 👍/👎 per model."""
        _require_operator(account)
        days = await _days(request, period, server)
        body: dict[str, Any] = {
            "period": period,
            "server": server or "all",
            "first": days[0][0].isoformat(),
            "last": days[-1][0].isoformat(),
            "summary": merged(days).summary(),
            "days": [{"day": day.isoformat(), **stats.summary()} for day, stats in days],
        }
        return with_rate_headers(request, JSONResponse(body))

    @router.get(
        "/admin/usage/chart.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **NOT_OPERATOR},
    )
    async def chart(
        request: Request, account: Caller, period: Period = "week", server: Server = None
    ) -> Response:
        """Generations a day and the p95 time from request to result, as a PNG."""
        _require_operator(account)
        days = await _days(request, period, server)
        title = f"{'All servers' if not server else 'Server ' + server}: last {len(days)} day(s)"
        png = await asyncio.to_thread(usage_chart, days, title)
        return with_rate_headers(
            request, Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
        )

    return router
