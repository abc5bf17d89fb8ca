"""CUDA graphs for the UNet: one captured graph per input shape, replayed at every step.

At launch-bound sizes (SD 1.5 at 512 px, batch 1) the GPU finishes a step's hundreds of
small kernels faster than Python can launch them. Replaying a captured graph launches them
all at once. A graph holds fixed shapes and addresses, so each call's tensors are copied
into the graph's own input buffers, a batch is padded up to the next captured row count
(rows are independent in a UNet: the padding cannot change the real rows), and only the
real rows of the output are handed back, as a copy.

Only the engine's worker thread runs pipelines, so the graphs are never replayed
concurrently; that is what makes sharing one memory pool between them safe.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

# Graphs kept per module; the least recently used is dropped beyond this (each holds a few
# MB of host memory; their GPU memory comes from one shared pool).
MAX_GRAPHS = 16
_WARMUP_CALLS = 2  # eager calls on a side stream before capture (cuBLAS/cuDNN set-up)

Forward = Callable[..., Any]


class Capture(Protocol):
    """Records ``run`` (which reads and writes only the given static tensors) and returns
    a function that replays it."""

    def __call__(self, run: Callable[[], Any]) -> tuple[Callable[[], None], Any]: ...


class CudaCapture:
    """The real thing: warm up on a side stream, capture into a shared memory pool."""

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, run: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_CALLS):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's work on the GPU (an upscaler, a classifier) does
        # not break this capture.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = run()
        return graph.replay, output


@dataclass(slots=True)
class _Graph:
    inputs: list[torch.Tensor]  # static buffers, padded shapes, in flattening order
    output: Any  # the captured call's output; overwritten by each replay
    replay: Callable[[], None]


def padded_rows(rows: int, captured: tuple[int, ...]) -> int | None:
    """The smallest captured row count that holds ``rows``; None: too many rows for any."""
    return next((size for size in sorted(captured) if size >= rows), None)


def graph_rows(max_images: int) -> tuple[int, ...]:
    """Row counts worth capturing: powers of two up to twice the largest batch (classifier-free
    guidance doubles the rows; without it a batch is its images)."""
    sizes = []
    size = 1
    while size < 2 * max_images:
        sizes.append(size)
        size *= 2
    sizes.append(size)
    return tuple(sizes)


class GraphedForward:
    """A module's forward that replays CUDA graphs when it can, and runs eagerly when not:
    more rows than the largest captured count, gradients on, keyword arguments a graph
    cannot hold (``cross_attention_kwargs``, ``return_dict=True``), or while paused."""

    def __init__(
        self,
        forward: Forward,
        rows: tuple[int, ...],
        *,
        capture: Capture | None = None,
        max_graphs: int = MAX_GRAPHS,
    ) -> None:
        self.forward = forward
        self.rows = tuple(sorted(set(rows)))
        self.paused = False
        self.captures = 0  # how many graphs were captured: for logs and tests
        self._capture = capture
        self._max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()

    def reset(self) -> None:
        """Drop every graph (the module's weights or structure changed)."""
        self._graphs.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sample = args[0] if args else kwargs.get("sample")
        if (
            self.paused
            or not isinstance(sample, torch.Tensor)
            or torch.is_grad_enabled()
            or kwargs.get("return_dict", True)
            or kwargs.get("cross_attention_kwargs") is not None
        ):
            return self.forward(*args, **kwargs)
        rows = sample.shape[0]
        padded = padded_rows(rows, self.rows)
        if padded is None:
            return self.forward(*args, **kwargs)
        tensors: list[torch.Tensor] = []
        try:
            structure = _flatten((args, kwargs), tensors)
        except _Unsupported:
            return self.forward(*args, **kwargs)
        key = (
            padded,
            structure,
            tuple(_signature(tensor, rows, padded) for tensor in tensors),
        )
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._record(key, args, kwargs, tensors, rows, padded)
        else:
            self._graphs.move_to_end(key)
        _copy_in(graph.inputs, tensors, rows)
        graph.replay()
        return _real_rows(graph.output, rows, padded)

    def _record(
        self,
        key: tuple[Any, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        tensors: list[torch.Tensor],
        rows: int,
        padded: int,
    ) -> _Graph:
        inputs = [
            torch.zeros(
                _padded_shape(tensor, rows, padded), dtype=tensor.dtype, device=tensor.device
            )
            for tensor in tensors
        ]
        _copy_in(inputs, tensors, rows)
        rebuilt = _unflatten((args, kwargs), iter(inputs))
        static_args, static_kwargs = rebuilt

        def run() -> Any:
            return self.forward(*static_args, **static_kwargs)

        if self._capture is None:
            self._capture = CudaCapture()
        replay, output = self._capture(run)
        graph = _Graph(inputs=inputs, output=output, replay=replay)
        self._graphs[key] = graph
        self.captures += 1
        while len(self._graphs) > self._max_graphs:
            self._graphs.popitem(last=False)
        log.debug("captured a CUDA graph for %d rows (%d real)", padded, rows)
        return graph


def install(
    module: torch.nn.Module,
    rows: tuple[int, ...],
    *,
    compile_with: str | None = None,
    compile_mode: str | None = None,
    capture: Capture | None = None,
) -> GraphedForward:
    """Make ``module(...)`` replay CUDA graphs. The instance's ``forward`` is replaced (its
    class stays, so diffusers still accepts it); with ``compile_with``, the graphs capture
    the torch.compile'd forward (inductor's kernels, launched by one replay)."""
    forward: Forward = module.forward
    if compile_with is not None:
        mode = compile_mode if compile_with == "inductor" else None
        forward = torch.compile(forward, backend=compile_with, mode=mode)
    graphed = GraphedForward(forward, rows, capture=capture)
    module.forward = graphed
    return graphed


def graphs_of(module: torch.nn.Module | None) -> GraphedForward | None:
    forward = getattr(module, "forward", None)
    return forward if isinstance(forward, GraphedForward) else None


# --- flattening the call's arguments --------------------------------------------------------


def _flatten(value: Any, tensors: list[torch.Tensor]) -> Any:
    """The call's structure with each tensor replaced by a marker (hashable); the tensors
    are appended to ``tensors`` in order."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _TENSOR
    if isinstance(value, dict):
        return ("dict", tuple((name, _flatten(item, tensors)) for name, item in value.items()))
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(_flatten(item, tensors) for item in value))
    if value is None or isinstance(value, bool | str):
        return value
    # Anything else, a Python number above all: a timestep passed as a number would be
    # baked into the graph, and a new graph captured for every step.
    raise _Unsupported


def _unflatten(value: Any, inputs: Iterator[torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return next(inputs)
    if isinstance(value, dict):
        return {name: _unflatten(item, inputs) for name, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_unflatten(item, inputs) for item in value)
    return value


class _Unsupported(TypeError):
    pass


_TENSOR = "<tensor>"


def _is_batch(tensor: torch.Tensor, rows: int) -> bool:
    return tensor.dim() > 0 and tensor.shape[0] == rows


def _padded_shape(tensor: torch.Tensor, rows: int, padded: int) -> tuple[int, ...]:
    if _is_batch(tensor, rows):
        return (padded, *tensor.shape[1:])
    return tuple(tensor.shape)


def _signature(tensor: torch.Tensor, rows: int, padded: int) -> tuple[Any, ...]:
    return (_padded_shape(tensor, rows, padded), tensor.dtype, tensor.device)


def _copy_in(inputs: list[torch.Tensor], tensors: list[torch.Tensor], rows: int) -> None:
    for static, tensor in zip(inputs, tensors, strict=True):
        if _is_batch(tensor, rows) and static.shape[0] != rows:
            static[:rows].copy_(tensor)
        else:
            static.copy_(tensor)


def _real_rows(output: Any, rows: int, padded: int) -> Any:
    """The output for the real rows, copied out of the graph's buffers (the next replay of
    any graph may overwrite them)."""
    if isinstance(output, torch.Tensor):
        return (output[:rows] if _is_batch(output, padded) else output).clone()
    if isinstance(output, tuple | list):
        return type(output)(_real_rows(item, rows, padded) for item in output)
    return output
