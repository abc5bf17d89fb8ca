"""Engine replicas on a Ray cluster: one ``Device`` per GPU, on any machine of the cluster.

Why Ray actors and not Ray Serve: the fair scheduler, the batching decisions, the quotas
and the durable job record stay in the front process, which decides which batch runs where.
Serve brings a router and queues of its own that would reorder what the scheduler decided;
an actor runs exactly the batch it is handed. Ray still does what it is for: placement
(``num_gpus=1`` puts each replica on its own GPU, wherever one is free), health, and restarts
(a crashed replica process is restarted by Ray; one killed for good is created again here).
Model affinity is the scheduler's own rule, per lane: each replica's lane asks for batches of
the model that replica holds, so models are not reloaded per job.

A replica streams its progress back (a Ray streaming generator), so previews and ETAs cross
the process boundary; a cancel is a second call on the same actor, which runs beside the
pipeline call (``max_concurrency``) and is seen at the next denoising step. A replica lost
mid-batch raises ``DeviceLost``: the engine runs the batch again on another lane, and since
only the front process delivers results, each job is delivered once.

Ray is imported only when this module's devices are started, so the local engine never
pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.devices import DeviceLost, SlotOutput, checked
from engine.errors import EngineError, Interrupted, OutOfMemory
from engine.loader import LoaderOptions
from engine.registry import ModelRegistry, ModelSpec
from engine.types import ImageSlot, ResolvedRequest, StepCallback, StepInfo

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "diffusion-chat"
ACTOR_PREFIX = "engine-replica"
# A replica forwards a step at most this often (previews and the last step always): the
# front's own progress events are no more frequent than that.
STEP_REPORT_INTERVAL_S = 0.1
PING_TIMEOUT_S = 120.0  # a replica (re)starting on a busy machine imports torch first
NAME_WAIT_S = 30.0
_GENERIC_FAILURE = "Something went wrong while generating this image."


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """What a replica needs to build its backend, sent to it once, at creation. Engine
    settings only: no tokens or keys travel to the cluster."""

    registry: ModelRegistry
    loader: LoaderOptions = field(default_factory=LoaderOptions)
    nsfw_model: str = "off"  # a transformers image classifier, or "off"
    torch_threads: int = 0  # 0: torch's default (one per core)


@dataclass(frozen=True, slots=True)
class RayOptions:
    address: str | None = None  # None: start or join a cluster on this machine ("auto")
    replicas: int = 0  # 0: one per GPU in the cluster (at least one)
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    namespace: str = DEFAULT_NAMESPACE
    env: dict[str, str] = field(default_factory=dict)  # for the replicas' processes


@dataclass(slots=True)
class ReplicaStats:
    """What a replica has done since it started: for operators and tests."""

    pid: int
    loads: deque[str] = field(default_factory=lambda: deque(maxlen=100))  # models, in order
    jobs: deque[str] = field(default_factory=lambda: deque(maxlen=1000))  # finished, in order
    running: list[str] = field(default_factory=list)  # the running call's job ids


class ReplicaServer:
    """The actor: a backend and the image check on one device, in a Ray worker process."""

    def __init__(self, config: ReplicaConfig) -> None:
        import torch

        from engine.backend import DiffusersBackend
        from engine.loader import ModelManager
        from engine.safety import NsfwClassifier

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self._registry = config.registry
        self._backend = DiffusersBackend(config.registry, ModelManager(config.loader))
        self._check = (
            None
            if config.nsfw_model.lower() == "off"
            else NsfwClassifier(config.nsfw_model, device=config.loader.device)
        )
        if self._check is not None:
            self._check.start_loading()
        self._cancelled: set[str] = set()
        # One pipeline call at a time, even if a front gave up on a call still running.
        self._lock = threading.Lock()
        self._stats = ReplicaStats(pid=os.getpid())

    def ping(self) -> str:
        return f"pid {os.getpid()}"

    def stats(self) -> ReplicaStats:
        return self._stats

    def cancel(self, job_ids: list[str]) -> None:
        self._cancelled.update(job_ids)

    def load(self, model: str, spec: ModelSpec | None) -> Iterator[tuple[str, Any]]:
        if spec is not None and (model not in self._registry or self._registry.get(model) != spec):
            # Added at run time (/model add) after this replica was created.
            if model in self._registry:
                self._registry.remove(model)
            self._registry.add(spec)
        events: queue.Queue[tuple[str, Any]] = queue.Queue()

        def call() -> None:
            with self._lock:
                try:
                    self._backend.load(model, lambda detail: events.put(("detail", detail)))
                    self._stats.loads.append(model)
                    events.put(("done", None))
                except BaseException as error:  # every failure crosses back
                    events.put(_failure(error))

        yield from _stream(call, events)

    def run(self, request: ResolvedRequest, slots: list[ImageSlot]) -> Iterator[tuple[str, Any]]:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        last_report = [0.0]
        self._cancelled = set()

        def on_step(info: StepInfo) -> frozenset[str]:
            now = time.monotonic()
            due = now - last_report[0] >= STEP_REPORT_INTERVAL_S
            if info.previews or info.step == info.total or due:
                last_report[0] = now
                events.put(("step", info))
            return frozenset(self._cancelled)

        def call() -> None:
            with self._lock:
                job_ids = sorted({slot.job_id for slot in slots})
                self._stats.running = job_ids
                try:
                    outputs = self._backend.run(request, slots, on_step)
                    events.put(("done", checked(outputs, self._check)))
                    self._stats.jobs.extend(job_ids)
                except BaseException as error:  # every failure crosses back
                    events.put(_failure(error))
                finally:
                    self._stats.running = []

        yield from _stream(call, events)


def _stream(
    call: Callable[[], None], events: queue.Queue[tuple[str, Any]]
) -> Iterator[tuple[str, Any]]:
    """Run ``call`` on its own thread and yield what it reports until its last word."""
    threading.Thread(target=call, name="replica-call", daemon=True).start()
    while True:
        event = events.get()
        yield event
        if event[0] != "step" and event[0] != "detail":
            return


def _failure(error: BaseException) -> tuple[str, Any]:
    """An exception as plain data: engine errors keep their user-facing text; anything else
    is logged here, on the replica, and crosses as the generic message."""
    if isinstance(error, Interrupted):
        return ("interrupted", None)
    if isinstance(error, OutOfMemory):
        return ("oom", str(error))
    if isinstance(error, EngineError):
        return ("error", (error.template, error.values))
    log.error("replica failure", exc_info=error)
    return ("error", (_GENERIC_FAILURE, {}))


def _raise_failure(kind: str, payload: Any) -> None:
    if kind == "interrupted":
        raise Interrupted()
    if kind == "oom":
        raise OutOfMemory(payload)
    template, values = payload
    raise EngineError(template, **values)


class RayDevice:
    """The front process's side of one replica."""

    def __init__(
        self,
        index: int,
        config: ReplicaConfig,
        options: RayOptions,
        model_spec: Callable[[str], ModelSpec | None] | None = None,
    ) -> None:
        self.index = index
        self.name = f"replica {index}"
        self._config = config
        self._options = options
        self._model_spec = model_spec
        self._actor: Any = None
        self._loaded: str | None = None

    @property
    def actor_name(self) -> str:
        return f"{ACTOR_PREFIX}-{self.index}"

    async def start(self) -> None:
        await asyncio.to_thread(connect, self._options)
        try:
            await self._create_and_ping()
        except TimeoutError:
            raise EngineError(
                f"{self.name} did not start within {PING_TIMEOUT_S:.0f} s: does the cluster "
                f"have {self._options.gpus_per_replica:g} GPU(s) and "
                f"{self._options.cpus_per_replica:g} CPU(s) free for it?"
            ) from None

    def is_loaded(self, model: str) -> bool:
        return self._loaded == model

    async def load(self, model: str, on_detail: Callable[[str], None]) -> None:
        self._loaded = None
        spec = self._model_spec(model) if self._model_spec is not None else None
        async for kind, payload in self._call("load", model, spec):
            if kind == "detail":
                on_detail(payload)
            elif kind == "done":
                self._loaded = model
            else:
                _raise_failure(kind, payload)

    async def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[SlotOutput]:
        told: set[str] = set()
        outputs: list[SlotOutput] | None = None
        try:
            async for kind, payload in self._call("run", request, slots):
                if kind == "step":
                    cancelled = on_step(payload) - told
                    if cancelled:
                        told |= cancelled
                        self._actor.cancel.remote(sorted(cancelled))
                elif kind == "done":
                    outputs = payload
                else:
                    _raise_failure(kind, payload)
        except asyncio.CancelledError:
            # The front stops waiting (shutdown): stop the replica too, at its next step.
            if self._actor is not None:
                self._actor.cancel.remote([slot.job_id for slot in slots])
            raise
        if outputs is None:
            raise DeviceLost("the replica's answer ended without a result")
        return outputs

    async def recover(self) -> None:
        self._loaded = None
        delay = 1.0
        while True:
            try:
                await self._create_and_ping()
                log.info("%s is back (%s)", self.name, self.actor_name)
                return
            except Exception as error:  # keep trying; other lanes serve
                log.warning("%s is not back yet: %s", self.name, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        if self._actor is not None:
            import ray

            await asyncio.to_thread(ray.kill, self._actor)
            self._actor = None

    async def _create_and_ping(self) -> None:
        """Ping the actor; create it if there is none or it died for good. A replica that
        Ray is restarting answers once it is up."""
        import ray
        from ray.exceptions import ActorDiedError

        if self._actor is not None:
            try:
                await asyncio.wait_for(_awaitable(self._actor.ping.remote()), PING_TIMEOUT_S)
                return
            except ActorDiedError:
                self._actor = None
        remote = ray.remote(ReplicaServer).options(
            name=self.actor_name,
            namespace=self._options.namespace,
            num_gpus=self._options.gpus_per_replica,
            num_cpus=self._options.cpus_per_replica,
            max_restarts=-1,  # a crashed process comes back, on another machine if need be
            max_task_retries=0,  # a lost batch is re-run by the engine, which knows its jobs
            max_concurrency=4,  # cancel and ping answer while a call runs
            runtime_env={"env_vars": self._options.env} if self._options.env else None,
        )
        self._actor = await self._create(remote)
        answer = await asyncio.wait_for(_awaitable(self._actor.ping.remote()), PING_TIMEOUT_S)
        log.info("%s ready as %s (%s)", self.name, self.actor_name, answer)

    async def _create(self, remote: Any) -> Any:
        """The actor, under its name. A front process that was killed leaves its replicas
        behind until Ray sees its death, a few seconds: their names are waited for."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NAME_WAIT_S
        while True:
            try:
                return remote.remote(self._config)
            except ValueError as error:  # the name is taken
                if loop.time() > deadline:
                    raise EngineError(
                        f"The Ray actor {self.actor_name} already exists in namespace "
                        f"{self._options.namespace!r}: another front process uses this "
                        f"cluster. Give each one its own RAY_NAMESPACE."
                    ) from error
            await asyncio.sleep(1.0)

    async def _call(self, method: str, *args: object) -> Any:
        """Iterate a streaming actor method's events; a lost replica raises DeviceLost."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        lost = (ActorDiedError, ActorUnavailableError, RayActorError)
        if self._actor is None:
            raise DeviceLost("the replica is not running")
        try:
            stream = getattr(self._actor, method).options(num_returns="streaming").remote(*args)
            async for ref in stream:
                yield await ref
        except lost as error:
            raise DeviceLost(type(error).__name__) from None


async def _awaitable(ref: Any) -> Any:
    return await ref


_connect_lock = threading.Lock()


def connect(options: RayOptions) -> None:
    """Join the cluster at ``options.address`` once per process (blocking: run it off the
    loop)."""
    import ray

    with _connect_lock:
        if ray.is_initialized():
            return
        try:
            ray.init(
                address=options.address or "auto",
                namespace=options.namespace,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as error:
            where = options.address or "this machine (RAY_ADDRESS is not set)"
            raise EngineError(f"Could not join the Ray cluster at {where}: {error}") from error


def replica_count(options: RayOptions) -> int:
    """``options.replicas``, or one per GPU the cluster has (blocking)."""
    if options.replicas:
        return options.replicas
    import ray

    connect(options)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per = options.gpus_per_replica or 1.0
    return max(1, int(gpus // per))


@contextlib.contextmanager
def local_cluster(
    *, cpus: int, gpus: int = 0, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """A throwaway Ray cluster on this machine, on 127.0.0.1, for tests and benchmarks;
    yields its address. ``env`` is what its worker processes (the replicas) see."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    ray = str(Path(sys.executable).with_name("ray"))
    # Ray's socket paths must stay short: a folder directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    command = [
        ray,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={cpus}",
        f"--num-gpus={gpus}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--object-store-memory=150000000",
        f"--temp-dir={temp_dir}",
    ]
    started = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=environ, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
