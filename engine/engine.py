"""The engine: a fair, batching queue served by one lane per device.

Callers ``submit`` requests and get a ``JobHandle`` whose events tell the job's life. Each
device (``engine.devices``: this process's GPU by default, or Ray replicas) has a lane, an
asyncio task that takes the next batch the scheduler picks for what that device holds. The
pipeline runs off the event loop (a worker thread, or another process); everything it
reports comes back through ``loop.call_soon_threadsafe``, so the loop (and Discord's
heartbeat) never stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from engine.cache import CacheKey, ResultCache, cache_key
from engine.devices import Device, DeviceLost, LocalDevice, SlotOutput
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

TOO_LARGE = N_("This request is too large for this GPU. Try fewer images or a smaller size.")
POSITION_WINDOW = 250  # queued jobs told their exact position on every change
# A batch whose device was lost (a replica or its machine died) runs again this many times
# elsewhere before its jobs fail: a job that itself kills replicas must not kill them all.
DEVICE_LOSS_RETRIES = 2


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


@dataclass(eq=False)
class _Lane:
    """One device and the batch it is running."""

    device: Device
    running: list[_Work] = field(default_factory=list)
    cancelled: frozenset[str] = frozenset()  # running jobs nobody waits for any more
    loaded_model: str | None = None
    eta_end: float | None = None
    token: int = 0  # the running call's; any other value tells it to stop at its next step
    task: asyncio.Task[None] | None = None


class Engine:
    def __init__(
        self,
        backend: Backend,
        settings: EngineSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        image_check: ImageCheck | None = None,
        devices: Sequence[Device] | None = None,
    ) -> None:
        """``backend`` resolves requests here. Without ``devices`` it also runs them, on
        this process's device, with ``image_check``; remote devices check their own."""
        if devices is not None and image_check is not None:
            raise ValueError("image_check is for the local device; remote devices bring theirs")
        self._backend = backend
        self._lanes = [_Lane(d) for d in devices or [LocalDevice(backend, image_check)]]
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
        # Seconds per denoising step per image, by (model, pixels): the basis of every ETA.
        self._step_cost: dict[tuple[str, int], float] = {}
        self._run_token = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._positions_dirty = False
        self._unplaced: list[_Work] = []  # submitted since the last position update
        self._decode_slots = asyncio.Semaphore(max(1, self.settings.max_concurrent_decodes))
        self.worker_restarts = 0

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(lane.device.start() for lane in self._lanes))
        self._accepting = True
        self._stopping = False
        self._supervisor = asyncio.create_task(self._supervise(), name="engine-supervisor")

    async def drain(self) -> None:
        """Stop taking jobs, finish every queued and running one, then stop."""
        self._accepting = False
        await self._wait_empty()
        await self.stop()

    @property
    def _running(self) -> list[_Work]:
        return [work for lane in self._lanes for work in lane.running]

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
        tasks = [self._supervisor, *(lane.task for lane in self._lanes)]
        for lane in self._lanes:
            lane.token = -1  # tells a running pipeline call to abort at its next step
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # Wait for orphaned pipeline calls so the devices are free when we return.
        await asyncio.gather(*(lane.device.close() for lane in self._lanes))
        stopped = EngineStopped("The bot is restarting; your job will resume.")
        for work in list(self._works.values()):
            for handle in work.handles:
                handle._emit(stopped)
        self._works.clear()
        self._inflight.clear()
        for lane in self._lanes:
            lane.running = []
            lane.task = None
        self._supervisor = None

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

    def remember(self, result: JobResult) -> None:
        """Answer ``result.request`` with ``result`` from now on, as if this engine had
        made it (results generated elsewhere: another process, an earlier run)."""
        key = cache_key(result.request)
        if key is not None:
            self._cache.put(key, result)

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
        elif lane := next((lane for lane in self._lanes if work in lane.running), None):
            lane.cancelled = lane.cancelled | {work.id}
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
            QueueEntry(w.id, w.user_id, w.request.model, w.request.count, 0, self._lane_left(lane))
            for lane in self._lanes
            for w in lane.running
        ]
        eta: float | None = self._running_left() or 0.0
        ordered = itertools.islice(self._scheduler.iter_ordered(), limit)
        for position, job in enumerate(ordered, start=1):
            estimate = self._estimate_s(job.request)
            # The devices work through the queue side by side.
            share = None if estimate is None else estimate / len(self._lanes)
            eta = None if eta is None or share is None else eta + share
            entries.append(
                QueueEntry(job.job_id, job.user_id, job.request.model, job.images, position, eta)
            )
        return entries

    def _running_left(self) -> float | None:
        """When the first device is expected to be free: where the queue's ETAs start."""
        if any(not lane.running for lane in self._lanes):
            return 0.0
        known = [s for lane in self._lanes if (s := self._lane_left(lane)) is not None]
        return min(known) if known else None

    def _lane_left(self, lane: _Lane) -> float | None:
        if lane.eta_end is None:
            return None
        return max(0.0, lane.eta_end - self._clock())

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
        models = sorted({lane.loaded_model for lane in self._lanes if lane.loaded_model})
        return EngineStatus(
            queued=len(self._scheduler),
            running=len(self._running),
            loaded_model=", ".join(models) or None,
            worker_alive=all(
                lane.task is not None and not lane.task.done() for lane in self._lanes
            ),
            worker_restarts=self.worker_restarts,
            cache_hits=self._cache.hits,
            cache_misses=self._cache.misses,
        )

    # --- the lanes -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Keep one lane task per device alive; a lane that dies (a bug, never a job's
        failure) is restarted and its batch retried once."""
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._lane_loop(lane), name="engine-worker")
        while not self._stopping:
            tasks = {lane.task for lane in self._lanes if lane.task is not None}
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self._stopping:
                return
            for lane in self._lanes:
                if lane.task is None or not lane.task.done():
                    continue
                crash = None if lane.task.cancelled() else lane.task.exception()
                log.error("engine worker died; restarting it", exc_info=crash)
                self.worker_restarts += 1
                lane.token = 0  # the orphaned pipeline call, if any, stops at its next step
                held, lane.running = lane.running, []
                lane.cancelled = frozenset()
                lane.eta_end = None
                self._run_again(held, tries=1)
                lane.task = asyncio.create_task(self._lane_loop(lane), name="engine-worker")

    def _run_again(self, works: Iterable[_Work], *, tries: int) -> None:
        """Put works whose run was lost back at the front of the queue, up to ``tries``
        times each; after that they fail."""
        for work in works:
            work.attempts += 1
            if not work.handles:
                self._forget(work)
            elif work.attempts > tries:
                self._finish_failed(
                    work, N_("Something went wrong while generating. Please try again.")
                )
            else:
                work.started_at = None
                work.last_position = None
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
        self._publish_positions_soon()
        self._wakeup.set()

    async def _lane_loop(self, lane: _Lane) -> None:
        while True:
            batch = self._scheduler.next_batch(lane.loaded_model, self._clock())
            if not batch:
                if not self._running:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._idle.clear()
            lane.running = [self._works[job.job_id] for job in batch]
            self._publish_positions_soon()
            try:
                await self._run_batch(lane, lane.running)
            except DeviceLost as error:
                log.warning(
                    "%s was lost mid-batch (%s); its jobs run again", lane.device.name, error
                )
                held, lane.running = lane.running, []
                lane.loaded_model = None
                self._run_again(held, tries=DEVICE_LOSS_RETRIES)
                await lane.device.recover()
            lane.running = []
            lane.cancelled = frozenset()
            lane.eta_end = None
            if len(self._lanes) > 1:
                self._wakeup.set()  # a lane waiting for work may take what this one left

    async def _run_batch(self, lane: _Lane, works: list[_Work]) -> None:
        request = works[0].request
        now = self._clock()
        for work in works:
            work.started_at = now
        load_s = 0.0
        try:
            if not lane.device.is_loaded(request.model):
                for work in works:
                    work.emit(ModelLoading(request.model))
                started = self._clock()

                def loading(detail: str) -> None:
                    for work in works:
                        work.emit(ModelLoading(request.model, detail))

                lane.loaded_model = None
                await lane.device.load(request.model, self._thread_callback(loading))
                load_s = self._clock() - started
            lane.loaded_model = request.model
        except DeviceLost:
            raise
        except Exception as error:  # every load failure fails the batch
            reason = _user_reason(error, f"The model {request.model!r} could not be loaded.")
            for work in works:
                self._finish_failed(work, reason)
            return
        for work in works:
            work.load_s = load_s
            work.emit(Started())
        estimate = sum(self._estimate_s(w.request) or 0.0 for w in works)
        lane.eta_end = self._clock() + estimate if estimate else None

        slots = [slot for work in works for slot in work.request.slots(work.id)]
        started = self._clock()
        try:
            outputs = await self._run_slots(lane, request, slots, works)
        except DeviceLost:
            raise
        except Exception as error:  # a failure ends this batch only
            reason = _user_reason(error, N_("Something went wrong while generating this image."))
            for work in works:
                self._finish_failed(work, reason)
            return
        generate_s = self._clock() - started
        self._record_step_cost(request, len(slots), generate_s)

        by_work: dict[str, list[SlotOutput]] = {w.id: [] for w in works}
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
        self, lane: _Lane, request: ResolvedRequest, slots: list[ImageSlot], works: list[_Work]
    ) -> list[SlotOutput]:
        """Run slots in one call; on out-of-memory, split in halves down to single images."""
        live = [s for s in slots if s.job_id not in lane.cancelled]
        if not live:
            return [None] * len(slots)
        token = next(self._run_token)
        lane.token = token
        started = self._clock()
        by_id = {w.id: w for w in works}
        everyone = frozenset(s.job_id for s in slots)

        interval = self.settings.progress_interval_s
        last_report = [-interval]

        def on_step(info: StepInfo) -> frozenset[str]:
            if lane.token != token:
                return everyone
            # Waking the event loop on every step costs the launching thread time when steps
            # are short; a preview or the last step is always reported.
            now = time.monotonic()
            if info.previews or info.step == info.total or now - last_report[0] >= interval:
                last_report[0] = now
                self._loop.call_soon_threadsafe(self._on_step, by_id, info, started)
            return lane.cancelled

        try:
            return await lane.device.run(request, slots, on_step)
        except Interrupted:
            return [None] * len(slots)
        except OutOfMemory:
            if len(slots) == 1:
                return [TOO_LARGE]
            half = len(slots) // 2
            log.warning("out of memory with %d images; retrying in halves", len(slots))
            first = await self._run_slots(lane, request, slots[:half], works)
            return first + await self._run_slots(lane, request, slots[half:], works)

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
