"""The engine: one asyncio task that owns the GPU and serves a fair, batching queue.

Callers ``submit`` requests and get a ``JobHandle`` whose events tell the job's life. The
pipeline runs in a worker thread; everything it reports comes back to the event loop
through ``loop.call_soon_threadsafe``, so the loop (and Discord's heartbeat) never stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from engine.cache import CacheKey, ResultCache, cache_key
from engine.errors import N_, EngineError, EngineStopped, Interrupted, OutOfMemory
from engine.safety import ImageCheck
from engine.scheduler import QueuedJob, Scheduler
from engine.types import (
    DEFAULT_BATCH_IMAGES,
    TERMINAL_EVENTS,
    Backend,
    Cancelled,
    Done,
    Event,
    Failed,
    GeneratedImage,
    GenerationRequest,
    ImageSlot,
    JobResult,
    ModelLoading,
    Progress,
    Queued,
    ResolvedRequest,
    Started,
    StepInfo,
    Timings,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

TOO_LARGE = N_("This request is too large for this GPU. Try fewer images or a smaller size.")
POSITION_WINDOW = 250  # queued jobs told their exact position on every change


@dataclass(frozen=True, slots=True)
class EngineSettings:
    max_queued: int = 200
    max_queued_per_user: int = 5
    max_batch_images: int = 0  # 0: sized for the model family (SD 1.5: 8, SDXL: 4)
    affinity_max_wait_s: float = 30.0
    cache_entries: int = 64
    cache_bytes: int = 512 * 2**20
    progress_interval_s: float = 0.1  # progress events at most this often (previews always)
    # Requests with input images resolved at once (decoding an upload can take hundreds of
    # MB); the rest wait on the event loop, not in a thread. The backend bounds it as well.
    max_concurrent_decodes: int = 2


@dataclass(frozen=True, slots=True)
class QueueEntry:
    job_id: str
    user_id: str
    model: str
    images: int
    position: int  # 0 = running now
    eta_s: float | None


@dataclass(frozen=True, slots=True)
class EngineStatus:
    queued: int
    running: int
    loaded_model: str | None
    worker_alive: bool
    worker_restarts: int
    cache_hits: int
    cache_misses: int


class JobHandle:
    """One caller's view of a job: its id, its events, and a way to cancel it."""

    def __init__(self, job_id: str, request: ResolvedRequest, engine: Engine) -> None:
        self.job_id = job_id
        self.request = request
        self._engine = engine
        self._events: asyncio.Queue[Event | EngineStopped] = asyncio.Queue()
        self.last_event: Event | None = None
        self.finished = False
        self._work_id: str | None = None  # the computation this handle follows

    def _emit(self, event: Event | EngineStopped) -> None:
        if self.finished:
            return
        if isinstance(event, (*TERMINAL_EVENTS, EngineStopped)):
            self.finished = True
        if not isinstance(event, EngineStopped):
            self.last_event = event
        self._events.put_nowait(event)

    def cancel(self) -> bool:
        """Cancel this job; False when it had already finished."""
        return self._engine._cancel_handle(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            if isinstance(event, EngineStopped):
                raise event
            yield event
            if isinstance(event, TERMINAL_EVENTS):
                return

    async def wait(self) -> Done | Failed | Cancelled:
        """Consume events until the job ends and return the final one."""
        async for event in self:
            if isinstance(event, Done | Failed | Cancelled):
                return event
        raise AssertionError("a job's events always end with a terminal event")


@dataclass(eq=False)
class _Work:
    """One computation. Identical seeded requests in flight share one, with many handles."""

    id: str
    request: ResolvedRequest
    user_id: str
    tier: int
    key: CacheKey | None
    enqueued_at: float
    handles: list[JobHandle] = field(default_factory=list)
    attempts: int = 0
    started_at: float | None = None
    load_s: float = 0.0
    last_position: tuple[int, float | None] | None = None

    def emit(self, event: Event) -> None:
        for handle in list(self.handles):
            handle._emit(event)


class Engine:
    def __init__(
        self,
        backend: Backend,
        settings: EngineSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        image_check: ImageCheck | None = None,
    ) -> None:
        self._backend = backend
        # Scores every image of each pipeline call, on the device thread right after it.
        self._image_check = image_check
        self.settings = settings or EngineSettings()
        self._clock = clock
        self._scheduler = Scheduler(
            max_queued=self.settings.max_queued,
            max_queued_per_user=self.settings.max_queued_per_user,
            max_images_per_call=self.max_images_per_call,
            affinity_max_wait_s=self.settings.affinity_max_wait_s,
        )
        self._cache = ResultCache(self.settings.cache_entries, self.settings.cache_bytes)
        self._works: dict[str, _Work] = {}
        self._inflight: dict[CacheKey, _Work] = {}
        self._running: list[_Work] = []
        self._cancelled_running: frozenset[str] = frozenset()
        self._loaded_model: str | None = None
        # Seconds per denoising step per image, by (model, pixels): the basis of every ETA.
        self._step_cost: dict[tuple[str, int], float] = {}
        self._running_eta_end: float | None = None
        # One pipeline call at a time, even if a restarted worker overlaps an orphaned thread.
        self._device_lock = threading.Lock()
        self._run_token = itertools.count(1)
        self._current_token = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._positions_dirty = False
        self._unplaced: list[_Work] = []  # submitted since the last position update
        # One thread runs every pipeline call and load: torch keeps a thread pool per
        # calling thread, and two pools on a small CPU slow each other down.
        self._device_executor: ThreadPoolExecutor | None = None
        self._decode_slots = asyncio.Semaphore(max(1, self.settings.max_concurrent_decodes))
        self.worker_restarts = 0

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._loop = asyncio.get_running_loop()
        if (start_loading := getattr(self._image_check, "start_loading", None)) is not None:
            start_loading()
        if self._device_executor is None:
            self._device_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._accepting = True
        self._stopping = False
        self._supervisor = asyncio.create_task(self._supervise(), name="engine-supervisor")

    async def drain(self) -> None:
        """Stop taking jobs, finish every queued and running one, then stop."""
        self._accepting = False
        await self._wait_empty()
        await self.stop()

    async def _wait_empty(self) -> None:
        while len(self._scheduler) or self._running:
            self._idle.clear()
            self._wakeup.set()
            await self._idle.wait()

    async def stop(self) -> None:
        """Stop now. Unfinished jobs end their handles with EngineStopped (not Cancelled), so
        a caller that keeps durable records can resume them on the next start."""
        self._accepting = False
        self._stopping = True
        self._current_token = -1  # tells a running pipeline call to abort at its next step
        for task in (self._supervisor, self._worker_task):
            if task is not None:
                task.cancel()
        for task in (self._supervisor, self._worker_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # Wait for an orphaned pipeline thread so the device is free when we return.
        acquired = await asyncio.to_thread(self._device_lock.acquire, True, 30.0)
        if acquired:
            self._device_lock.release()
        if self._device_executor is not None:
            self._device_executor.shutdown(wait=False)
            self._device_executor = None
        stopped = EngineStopped("The bot is restarting; your job will resume.")
        for work in list(self._works.values()):
            for handle in work.handles:
                handle._emit(stopped)
        self._works.clear()
        self._inflight.clear()
        self._running = []
        self._supervisor = None
        self._worker_task = None

    # --- submission ----------------------------------------------------------------------

    def max_images_per_call(self, request: ResolvedRequest) -> int:
        return self.settings.max_batch_images or DEFAULT_BATCH_IMAGES.get(request.family, 4)

    async def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        """Validate a request and fill its defaults, off the event loop.

        Input images are decoded here, once, a few at a time: the resolved request carries
        them at the size the pipeline takes, so submitting it decodes nothing large again.
        """
        if request.init_image is None and request.mask_image is None:
            return await asyncio.to_thread(self._backend.resolve, request)
        async with self._decode_slots:
            return await asyncio.to_thread(self._backend.resolve, request)

    async def submit(
        self,
        request: GenerationRequest | ResolvedRequest,
        *,
        user_id: str,
        tier: int = 0,
        job_id: str | None = None,
        resumed: bool = False,
    ) -> JobHandle:
        """Queue a request. Raises EngineError subclasses with user-safe messages.

        ``resumed`` marks a job accepted before a restart: the queue limits, which protect
        new submissions, do not refuse it again.
        """
        if not self._accepting:
            raise EngineStopped(N_("The image engine is not running right now. Try again shortly."))
        resolved = request if isinstance(request, ResolvedRequest) else await self.resolve(request)
        job_id = job_id or secrets.token_hex(6)
        handle = JobHandle(job_id, resolved, self)
        key = cache_key(resolved)
        if key is not None:
            cached = self._cache.get(key)
            if cached is not None:
                handle._emit(Done(replace(cached, job_id=job_id, from_cache=True)))
                return handle
            shared = self._inflight.get(key)
            if shared is not None:
                shared.handles.append(handle)
                handle._work_id = shared.id
                if shared.started_at is not None:
                    handle._emit(Started())
                else:
                    position, eta = shared.last_position or (1, None)
                    handle._emit(Queued(position, eta))
                return handle
        work = _Work(
            id=job_id,
            request=resolved,
            user_id=user_id,
            tier=tier,
            key=key,
            enqueued_at=self._clock(),
            handles=[handle],
        )
        handle._work_id = job_id
        self._scheduler.push(
            QueuedJob(job_id, user_id, resolved, enqueued_at=work.enqueued_at, tier=tier),
            bypass_limits=resumed,
        )
        self._works[job_id] = work
        if key is not None:
            self._inflight[key] = work
        self._unplaced.append(work)
        self._publish_positions_soon()
        self._wakeup.set()
        return handle

    def cancel(self, job_id: str) -> bool:
        """Cancel every handle of a job by id (a moderator's cancel, say)."""
        work = self._works.get(job_id)
        if work is None:
            return False
        for handle in list(work.handles):
            handle.cancel()
        return True

    def _cancel_handle(self, handle: JobHandle) -> bool:
        if handle.finished:
            return False
        handle._emit(Cancelled())
        work = self._works.get(handle._work_id or "")
        if work is not None and handle in work.handles:
            work.handles.remove(handle)
            if not work.handles:
                self._abandon(work)
        return True

    def _abandon(self, work: _Work) -> None:
        """Nobody waits for this work any more: drop it from the queue or the running call."""
        if self._scheduler.remove(work.id) is not None:
            self._forget(work)
            self._publish_positions_soon()
        elif work in self._running:
            self._cancelled_running = self._cancelled_running | {work.id}
            # An identical request arriving now must not join a computation being dropped.
            if work.key is not None and self._inflight.get(work.key) is work:
                del self._inflight[work.key]

    def _forget(self, work: _Work) -> None:
        self._works.pop(work.id, None)
        if work.key is not None and self._inflight.get(work.key) is work:
            del self._inflight[work.key]

    # --- queue information ---------------------------------------------------------------

    def _estimate_s(self, request: ResolvedRequest) -> float | None:
        cost = self._step_cost.get((request.model, request.pixels))
        if cost is None:
            # Scale a measurement at another size of the same model by the pixel count.
            for (model, pixels), known in self._step_cost.items():
                if model == request.model:
                    cost = known * request.pixels / pixels
                    break
        if cost is None:
            return None
        return cost * request.steps * request.count

    def queue_snapshot(self, limit: int | None = None) -> list[QueueEntry]:
        """Running jobs (position 0), then queued ones in expected order (the first ``limit``)."""
        entries = [
            QueueEntry(w.id, w.user_id, w.request.model, w.request.count, 0, self._running_left())
            for w in self._running
        ]
        eta: float | None = self._running_left() or 0.0
        ordered = itertools.islice(self._scheduler.iter_ordered(), limit)
        for position, job in enumerate(ordered, start=1):
            estimate = self._estimate_s(job.request)
            eta = None if eta is None or estimate is None else eta + estimate
            entries.append(
                QueueEntry(job.job_id, job.user_id, job.request.model, job.images, position, eta)
            )
        return entries

    def _running_left(self) -> float | None:
        if self._running_eta_end is None:
            return None
        return max(0.0, self._running_eta_end - self._clock())

    def _publish_positions_soon(self) -> None:
        # Coalesce: many submits in one loop iteration cost one pass over the queue.
        if not self._positions_dirty:
            self._positions_dirty = True
            asyncio.get_running_loop().call_soon(self._publish_positions)

    def _publish_positions(self) -> None:
        """Tell queued jobs where they stand. Only the front of a long queue gets exact
        positions on every change, so a submit costs the same with 200 or 10,000 queued;
        jobs further back hear "behind N" once and exact figures as they come forward."""
        self._positions_dirty = False
        window = self.queue_snapshot(limit=POSITION_WINDOW)
        for entry in window:
            work = self._works.get(entry.job_id)
            if work is None or entry.position == 0:
                continue
            eta = None if entry.eta_s is None else round(entry.eta_s)
            if work.last_position != (entry.position, eta):
                work.last_position = (entry.position, eta)
                work.emit(Queued(position=entry.position, eta_s=entry.eta_s))
        for work in self._unplaced:
            if work.last_position is None and work.id in self._scheduler:
                work.last_position = (len(self._scheduler), None)
                work.emit(Queued(position=len(self._scheduler), eta_s=None))
        self._unplaced.clear()

    def status(self) -> EngineStatus:
        return EngineStatus(
            queued=len(self._scheduler),
            running=len(self._running),
            loaded_model=self._loaded_model,
            worker_alive=self._worker_task is not None and not self._worker_task.done(),
            worker_restarts=self.worker_restarts,
            cache_hits=self._cache.hits,
            cache_misses=self._cache.misses,
        )

    # --- the worker ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._stopping:
            self._worker_task = asyncio.create_task(self._work_loop(), name="engine-worker")
            await asyncio.wait({self._worker_task})
            if self._stopping:
                return
            crash = None if self._worker_task.cancelled() else self._worker_task.exception()
            log.error("engine worker died; restarting it", exc_info=crash)
            self.worker_restarts += 1
            self._current_token = 0  # the orphaned pipeline call, if any, stops at its next step
            held, self._running = self._running, []
            self._cancelled_running = frozenset()
            self._running_eta_end = None
            for work in held:
                work.attempts += 1
                if not work.handles:
                    self._forget(work)
                elif work.attempts > 1:
                    self._finish_failed(
                        work, N_("Something went wrong while generating. Please try again.")
                    )
                else:
                    work.started_at = None
                    self._scheduler.push(
                        QueuedJob(
                            work.id,
                            work.user_id,
                            work.request,
                            enqueued_at=work.enqueued_at,
                            tier=work.tier,
                        ),
                        front=True,
                        bypass_limits=True,
                    )

    async def _work_loop(self) -> None:
        while True:
            batch = self._scheduler.next_batch(self._loaded_model, self._clock())
            if not batch:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._idle.clear()
            self._running = [self._works[job.job_id] for job in batch]
            self._publish_positions_soon()
            await self._run_batch(self._running)
            self._running = []
            self._cancelled_running = frozenset()
            self._running_eta_end = None

    async def _run_batch(self, works: list[_Work]) -> None:
        request = works[0].request
        now = self._clock()
        for work in works:
            work.started_at = now
        load_s = 0.0
        try:
            if not self._backend.is_loaded(request.model):
                for work in works:
                    work.emit(ModelLoading(request.model))
                started = self._clock()

                def loading(detail: str) -> None:
                    for work in works:
                        work.emit(ModelLoading(request.model, detail))

                await self._on_device(
                    self._backend.load, request.model, self._thread_callback(loading)
                )
                load_s = self._clock() - started
            self._loaded_model = request.model
        except Exception as error:  # every load failure fails the batch
            reason = _user_reason(error, f"The model {request.model!r} could not be loaded.")
            for work in works:
                self._finish_failed(work, reason)
            return
        for work in works:
            work.load_s = load_s
            work.emit(Started())
        estimate = sum(self._estimate_s(w.request) or 0.0 for w in works)
        self._running_eta_end = self._clock() + estimate if estimate else None

        slots = [slot for work in works for slot in work.request.slots(work.id)]
        started = self._clock()
        try:
            outputs = await self._run_slots(request, slots, works)
        except Exception as error:  # a failure ends this batch only
            reason = _user_reason(error, N_("Something went wrong while generating this image."))
            for work in works:
                self._finish_failed(work, reason)
            return
        generate_s = self._clock() - started
        self._record_step_cost(request, len(slots), generate_s)

        by_work: dict[str, list[GeneratedImage | str | None]] = {w.id: [] for w in works}
        for slot, output in zip(slots, outputs, strict=True):
            by_work[slot.job_id].append(output)
        for work in works:
            results = by_work[work.id]
            if not work.handles:
                self._forget(work)
            elif failure := next((r for r in results if isinstance(r, str)), None):
                self._finish_failed(work, failure)
            elif any(r is None for r in results):
                self._finish_failed(work, "This job was interrupted. Please try again.")
            else:
                images = tuple(r for r in results if isinstance(r, GeneratedImage))
                self._finish_done(work, images, generate_s)

    async def _run_slots(
        self, request: ResolvedRequest, slots: list[ImageSlot], works: list[_Work]
    ) -> list[GeneratedImage | str | None]:
        """Run slots in one call; on out-of-memory, split in halves down to single images."""
        live = [s for s in slots if s.job_id not in self._cancelled_running]
        if not live:
            return [None] * len(slots)
        token = next(self._run_token)
        self._current_token = token
        started = self._clock()
        by_id = {w.id: w for w in works}

        interval = self.settings.progress_interval_s
        last_report = [-interval]

        def on_step(info: StepInfo) -> frozenset[str]:
            if self._current_token != token:
                return frozenset(s.job_id for s in slots)
            # Waking the event loop on every step costs the launching thread time when steps
            # are short; a preview or the last step is always reported.
            now = time.monotonic()
            if info.previews or info.step == info.total or now - last_report[0] >= interval:
                last_report[0] = now
                self._loop.call_soon_threadsafe(self._on_step, by_id, info, started)
            return self._cancelled_running

        try:
            return await self._on_device(self._run_locked, request, slots, on_step)
        except Interrupted:
            return [None] * len(slots)
        except OutOfMemory:
            if len(slots) == 1:
                return [TOO_LARGE]
            half = len(slots) // 2
            log.warning("out of memory with %d images; retrying in halves", len(slots))
            first = await self._run_slots(request, slots[:half], works)
            return first + await self._run_slots(request, slots[half:], works)

    async def _on_device(self, function: Callable[..., T], *args: object) -> T:
        assert self._device_executor is not None, "the engine is not started"
        return await self._loop.run_in_executor(self._device_executor, function, *args)

    def _run_locked(
        self,
        request: ResolvedRequest,
        slots: list[ImageSlot],
        on_step: Callable[[StepInfo], frozenset[str]],
    ) -> list[GeneratedImage | str | None]:
        with self._device_lock:
            outputs: list[GeneratedImage | str | None] = list(
                self._backend.run(request, slots, on_step)
            )
            if self._image_check is None:
                return outputs
            made = [output for output in outputs if isinstance(output, GeneratedImage)]
            scores = iter(self._image_check.scores([output.image for output in made]))
            return [
                replace(output, nsfw_score=next(scores))
                if isinstance(output, GeneratedImage)
                else output
                for output in outputs
            ]

    def _on_step(self, works: dict[str, _Work], info: StepInfo, started: float) -> None:
        elapsed = self._clock() - started
        eta = elapsed / info.step * (info.total - info.step) if info.step else None
        for work in works.values():
            work.emit(Progress(info.step, info.total, eta, info.previews.get(work.id)))

    def _thread_callback(self, callback: Callable[[str], object]) -> Callable[[str], None]:
        def from_thread(detail: str) -> None:
            self._loop.call_soon_threadsafe(callback, detail)

        return from_thread

    def _record_step_cost(self, request: ResolvedRequest, images: int, seconds: float) -> None:
        sample = seconds / max(1, request.steps * images)
        key = (request.model, request.pixels)
        previous = self._step_cost.get(key)
        self._step_cost[key] = sample if previous is None else 0.7 * previous + 0.3 * sample

    def _finish_done(
        self, work: _Work, images: tuple[GeneratedImage, ...], generate_s: float
    ) -> None:
        now = self._clock()
        started = work.started_at if work.started_at is not None else now
        result = JobResult(
            job_id=work.id,
            request=work.request,
            images=images,
            timings=Timings(
                queued_s=started - work.enqueued_at,
                load_s=work.load_s,
                generate_s=generate_s,
                total_s=now - work.enqueued_at,
            ),
        )
        if work.key is not None:
            self._cache.put(work.key, result)
        for handle in list(work.handles):
            shared = handle.job_id != work.id
            handle._emit(Done(replace(result, job_id=handle.job_id, from_cache=shared)))
        self._forget(work)

    def _finish_failed(self, work: _Work, reason: str) -> None:
        work.emit(Failed(reason))
        self._forget(work)


def _user_reason(error: BaseException, fallback: str) -> str:
    if isinstance(error, EngineError):
        return str(error)
    log.error("engine failure", exc_info=error)
    return fallback
