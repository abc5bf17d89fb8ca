"""The library over HTTP: history and favourites with search, filters and sort, starring,
and the public share page of a result its owner shared."""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.context import ApiContext, ApiError, Caller, not_found, with_rate_headers
from api.diffusion import (
    ImageId,
    JobId,
    _own_image,
    _own_job,
    _resource,
    is_shared,
)
from api.schemas import (
    FeedbackBody,
    FeedbackState,
    HistoryPage,
    PromptSuggestions,
    ShareLink,
    StyleInfo,
)
from core.errors import InvalidField
from core.jobcodec import StoredRequest
from core.library import MAX_SEARCH_CHARS, OPERATIONS, build_query
from core.storage.files import LinkedImageStore
from core.storage.records import Job, JobStatus, LibraryQuery, LibraryScope, LibrarySort

PAGE_SIZE = 20
# The query's names for the fields ``build_query`` names.
_PARAMETER = {"search": "q", "since": "since", "until": "until", "sort": "sort"}
Moment = Annotated[
    str | None,
    Query(
        max_length=40,
        description="a date (2026-11-30), an ISO time, today, yesterday, or an age: 7d, 2w, 3m",
    ),
]


def library_routes() -> APIRouter:
    router = APIRouter(tags=["library"])

    @router.get("/prompts/suggestions", response_model=PromptSuggestions)
    async def prompt_suggestions(
        request: Request,
        account: Caller,
        q: Annotated[str, Query(max_length=MAX_SEARCH_CHARS, description="what is typed")] = "",
    ) -> Response:
        """Autocomplete for a prompt box: the caller's own prompts and popular shared ones."""
        context: ApiContext = request.app.state.context
        history = context.service.db.history
        suggestions = PromptSuggestions(
            mine=await history.recent(account.user_id, q, limit=8),
            popular=await history.shared(q, limit=5),
        )
        return with_rate_headers(request, JSONResponse(suggestions.model_dump()))

    @router.get("/styles", response_model=list[StyleInfo])
    async def styles(request: Request, account: Caller) -> Response:
        """The built-in styles (templates) a job's `style` names."""
        context: ApiContext = request.app.state.context
        found = [
            StyleInfo(name=style.name, template=style.template, negative=style.negative)
            for style in await context.service.styles(None)
        ]
        return with_rate_headers(request, JSONResponse([s.model_dump() for s in found]))

    @router.post("/jobs/{job_id}/feedback", response_model=FeedbackState)
    async def feedback(
        job_id: JobId, body: FeedbackBody, request: Request, account: Caller
    ) -> Response:
        """👍/👎 on a finished job of yours: the quality signal, counted per model in the
        operator dashboard and /stats, as the bot's buttons are."""
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        if job.status is not JobStatus.DONE:
            raise ApiError(409, "not_finished", "Only a finished job can be rated.")
        now = await context.service.db.usage.vote(
            account.user_id, job.id, 1 if body.vote == "up" else -1
        )
        state = FeedbackState(vote={1: "up", -1: "down"}.get(now))  # type: ignore[arg-type]
        return with_rate_headers(request, JSONResponse(state.model_dump()))

    @router.post("/jobs/{job_id}/share", response_model=ShareLink)
    async def share(job_id: JobId, request: Request, account: Caller) -> Response:
        """Make a finished job's images public at a link (`/s/{id}`) that chats unfurl."""
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        if job.status is not JobStatus.DONE:
            raise ApiError(409, "not_finished", "Only a finished job can be shared.")
        if job.gallery_removed_at is not None:
            raise ApiError(
                403, "removed", "A moderator took this result out of the gallery: it stays private."
            )
        library = context.service.db.library
        if await library.claim_share(job.id):
            await library.record_share(job.id, job.share_channel_id, job.share_message_id)
        link = ShareLink(url=_share_url(context, request, job.id), shared=True)
        return with_rate_headers(request, JSONResponse(link.model_dump()))

    @router.post("/jobs/{job_id}/unshare", response_model=ShareLink)
    async def unshare(job_id: JobId, request: Request, account: Caller) -> Response:
        """Revoke the public link: the page and its images answer 404 from now on."""
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        await context.service.db.library.unshare(job.id)
        link = ShareLink(url=_share_url(context, request, job.id), shared=False)
        return with_rate_headers(request, JSONResponse(link.model_dump()))

    @router.get("/history", response_model=HistoryPage)
    async def history(
        request: Request,
        account: Caller,
        page: Annotated[int, Query(ge=0, le=100_000)] = 0,
        q: Annotated[
            str | None, Query(max_length=MAX_SEARCH_CHARS, description="words in the prompt")
        ] = None,
        model: Annotated[str | None, Query(max_length=100)] = None,
        operation: Annotated[
            str | None, Query(max_length=20, description=", ".join(OPERATIONS))
        ] = None,
        status: Annotated[
            str | None, Query(max_length=20, description=", ".join(s.value for s in JobStatus))
        ] = None,
        since: Moment = None,
        until: Moment = None,
        favourites: Annotated[bool, Query(description="only jobs with an image you starred")] = (
            False
        ),
        sort: Annotated[
            str | None, Query(max_length=20, description=", ".join(s.value for s in LibrarySort))
        ] = None,
    ) -> Response:
        """The caller's jobs, newest first, 20 a page, searched, filtered and sorted."""
        query = _query(
            q=q,
            model=model,
            operation=operation,
            status=status,
            since=since,
            until=until,
            favourites_only=favourites,
            sort=sort,
        )
        return await _page(request, account.user_id, LibraryScope.HISTORY, query, page)

    @router.get("/favorites", response_model=HistoryPage)
    async def favorites(
        request: Request,
        account: Caller,
        page: Annotated[int, Query(ge=0, le=100_000)] = 0,
        q: Annotated[str | None, Query(max_length=MAX_SEARCH_CHARS)] = None,
        model: Annotated[str | None, Query(max_length=100)] = None,
        since: Moment = None,
        until: Moment = None,
        sort: Annotated[str | None, Query(max_length=20)] = None,
    ) -> Response:
        """Jobs with images the caller starred (theirs, or public ones in Discord), each with
        only its starred images, most recently starred first."""
        query = _query(q=q, model=model, since=since, until=until, sort=sort)
        return await _page(request, account.user_id, LibraryScope.FAVOURITES, query, page)

    # One route for both methods, so a 405 on this path names both in its Allow header.
    @router.api_route("/images/{image_id}/favorite", methods=["PUT", "DELETE"], status_code=204)
    async def star(image_id: ImageId, request: Request, account: Caller) -> Response:
        """PUT stars an image the caller can see (theirs, one they starred, or a shared
        one); DELETE unstars it."""
        context: ApiContext = request.app.state.context
        image = await _own_image(context, image_id, account)
        favourites = context.service.db.favourites
        if request.method == "PUT":
            await favourites.add(account.user_id, [image.id])
        else:
            await favourites.remove(account.user_id, [image.id])
        return with_rate_headers(request, Response(status_code=204))

    return router


def _query(q: str | None, **filters: Any) -> LibraryQuery:
    """``build_query`` for the query parameters; a wrong one is a 422 naming it."""
    try:
        return build_query(dt.datetime.now(dt.UTC), search=q, **filters)
    except InvalidField as error:
        raise ApiError(
            422, "invalid_request", str(error), field=_PARAMETER.get(error.field, error.field)
        ) from None


async def _page(
    request: Request, user_id: int, scope: LibraryScope, query: LibraryQuery, page: int
) -> Response:
    context: ApiContext = request.app.state.context
    found = await context.service.db.library.page(
        scope, user_id, query, offset=page * PAGE_SIZE, limit=PAGE_SIZE
    )
    items = [
        await _resource(context, request, entry.job, list(entry.images)) for entry in found.items
    ]
    body = HistoryPage(
        items=items,
        total=found.total,
        page=page,
        pages=max(1, math.ceil(found.total / PAGE_SIZE)),
    )
    return with_rate_headers(request, JSONResponse(body.model_dump(mode="json")))


# --- the public share page ----------------------------------------------------------------

_SHARE_HEADERS = {
    # The page shows a user's prompt: nothing in it may run, and only our images load.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every view: a revoked or removed link must stop working at once.
    "Cache-Control": "no-cache",
}


def share_routes() -> APIRouter:
    """No key needed: a result its owner shared is public until a moderator removes it."""
    router = APIRouter(include_in_schema=False)

    @router.get("/s/{job_id}", response_class=HTMLResponse)
    @router.get("/share/{job_id}", response_class=HTMLResponse)
    async def share_page(job_id: JobId, request: Request) -> Response:
        context: ApiContext = request.app.state.context
        job = await _shared_job(context, job_id)
        images = sorted(await context.service.job_images(job.id), key=lambda i: i.index)
        base = str(request.base_url).rstrip("/")
        urls = [f"{base}/share/{job.id}/{i.index + 1}.png" for i in images]
        headers = _SHARE_HEADERS
        store = context.service.images
        cdn = context.settings.s3_public_base_url
        if isinstance(store, LinkedImageStore) and cdn:
            # Straight from the CDN: lasting links that chats can unfurl and cache. (Without
            # a public address, our route streams them: a presigned link in a page's
            # og:image would stop working inside the chats' caches.)
            urls = [store.url_for(i.file_key, public=True) for i in images]
            policy = _SHARE_HEADERS["Content-Security-Policy"]
            headers = {
                **_SHARE_HEADERS,
                "Content-Security-Policy": policy.replace(
                    "img-src 'self'", f"img-src 'self' {_origin(cdn)}"
                ),
            }
        return HTMLResponse(_share_html(job, urls), headers=headers)

    @router.get("/share/{job_id}/{number}.png")
    async def shared_image(
        job_id: JobId,
        number: Annotated[int, Path(ge=1, le=16)],
        request: Request,
    ) -> Response:
        context: ApiContext = request.app.state.context
        job = await _shared_job(context, job_id)
        image = next(
            (i for i in await context.service.job_images(job.id) if i.index == number - 1), None
        )
        if image is None:
            raise not_found("image")
        data = await context.service.image_bytes(image)
        return Response(data, media_type="image/png", headers=_SHARE_HEADERS)

    return router


def _origin(url: str) -> str:
    """``https://cdn.example.com`` of ``https://cdn.example.com/images``, for a CSP source."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _share_url(context: ApiContext, request: Request, job_id: str) -> str:
    base = context.settings.api_public_url or str(request.base_url).rstrip("/")
    return f"{base}/s/{job_id}"


async def _shared_job(context: ApiContext, job_id: str) -> Job:
    job = await context.service.db.jobs.find(job_id)
    if job is None or not is_shared(job):
        raise not_found("shared result")
    return job


def _share_html(job: Job, image_urls: list[str]) -> str:
    stored = StoredRequest.loads(job.request).request
    prompt = html.escape(job.prompt)
    title = html.escape(job.prompt[:70] + ("…" if len(job.prompt) > 70 else ""))
    pictures = "\n".join(
        f'<a href="{html.escape(url)}"><img src="{html.escape(url)}" alt="{prompt}"></a>'
        for url in image_urls
    )
    first = html.escape(image_urls[0]) if image_urls else ""
    model = html.escape(stored.model or "default model")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Diffusion Chat</title>
<meta property="og:title" content="{title}">
<meta property="og:image" content="{first}">
<meta property="og:type" content="website">
<meta name="twitter:card" content="summary_large_image">
<meta name="twitter:title" content="{title}">
<meta name="twitter:image" content="{first}">
<style>
body {{ font-family: system-ui, sans-serif; background: #202225; color: #eee;
       max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }}
img {{ max-width: 100%; border-radius: 6px; margin: .25rem 0; }}
.meta {{ color: #aaa; }}
</style>
</head>
<body>
<h1>{prompt}</h1>
<p class="meta">{model} · shared {job.shared_at:%Y-%m-%d} · made with Diffusion Chat</p>
{pictures}
</body>
</html>
"""
