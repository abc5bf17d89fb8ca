"""CUDA graphs for the UNet (engine/cuda_graphs.py), checked on the CPU.

A CPU has no graphs to capture, so these tests hand GraphedForward a capture that replays by
running the recorded call again on the same static buffers. Everything around the graph is
the real code: the padding to a captured row count, the copies into fixed buffers and out of
them, the choice of graph per shape, the fall-backs and the LoRA pause. The speed of real
graphs is measured by bench/gpu.sh on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import cuda_graphs
from engine.backend import DiffusersBackend
from engine.cuda_graphs import GraphedForward, graph_rows, padded_rows
from engine.errors import ModelLoadError
from engine.loader import LoaderOptions, ModelManager
from engine.quantize import fp8_refusal, quantize_fp8, wants_fp8
from engine.registry import ModelRegistry
from engine.types import GenerationRequest
from tests.engine.helpers import max_pixel_difference, never_cancel, write_tiny_lora


class ReplayByRerunning:
    """A stand-in for CudaCapture: 'replaying' runs the recorded call again, which reads
    only the static buffers, exactly what a CUDA graph would read."""

    def __init__(self) -> None:
        self.replays = 0

    def __call__(self, run: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        output = run()
        holders = output if isinstance(output, tuple) else (output,)

        def replay() -> None:
            self.replays += 1
            fresh = run()
            for holder, value in zip(
                holders, fresh if isinstance(fresh, tuple) else (fresh,), strict=True
            ):
                holder.copy_(value)  # a graph writes its results into the same memory

        return replay, output


def rowwise(sample: torch.Tensor, timestep: torch.Tensor, *, scale: torch.Tensor,
            return_dict: bool = True) -> tuple[torch.Tensor]:  # fmt: skip
    """Row-independent, like a UNet: each row's output depends on its own inputs only."""
    return (sample * scale[:, None] + timestep,)


def test_row_counts_are_padded_to_the_next_captured_size() -> None:
    assert graph_rows(4) == (1, 2, 4, 8)
    assert graph_rows(3) == (1, 2, 4, 8)
    assert graph_rows(1) == (1, 2)
    assert padded_rows(3, (1, 2, 4, 8)) == 4
    assert padded_rows(8, (8, 1)) == 8
    assert padded_rows(9, (1, 2, 4, 8)) is None


def test_padded_replays_give_each_call_its_own_rows() -> None:
    capture = ReplayByRerunning()
    graphed = GraphedForward(rowwise, (4,), capture=capture)
    results = []
    with torch.no_grad():
        for seed in range(3):
            generator = torch.Generator().manual_seed(seed)
            sample = torch.randn(3, 5, generator=generator)
            scale = torch.rand(3, generator=generator)
            timestep = torch.tensor(float(seed))
            (out,) = graphed(sample, timestep, scale=scale, return_dict=False)
            (expected,) = rowwise(sample, timestep, scale=scale)
            assert out.shape == (3, 5)  # the padding row is dropped
            assert torch.equal(out, expected)
            results.append(out)
    assert graphed.captures == 1 and capture.replays == 3  # one graph, replayed each call
    # Outputs are copies: later replays do not change what an earlier call returned.
    assert not torch.equal(results[0], results[1])


def test_each_shape_gets_its_own_graph_and_the_oldest_is_dropped() -> None:
    graphed = GraphedForward(rowwise, (1, 2, 4), capture=ReplayByRerunning(), max_graphs=2)
    with torch.no_grad():
        for rows, width in ((1, 5), (2, 5), (1, 5), (1, 6), (2, 5)):
            sample = torch.ones(rows, width)
            graphed(sample, torch.tensor(1.0), scale=torch.ones(rows), return_dict=False)
    # (1,5) and (2,5) captured; (1,5) reused; (1,6) new, evicting (2,5), which is recaptured.
    assert graphed.captures == 4


def test_calls_a_graph_cannot_hold_run_eagerly() -> None:
    capture = ReplayByRerunning()
    graphed = GraphedForward(rowwise, (2,), capture=capture)
    sample, scale = torch.ones(2, 3), torch.ones(2)
    with torch.no_grad():
        graphed(torch.ones(3, 3), torch.tensor(1.0), scale=torch.ones(3), return_dict=False)
        graphed(sample, torch.tensor(1.0), scale=scale, return_dict=True)
        graphed(sample, 1.0, scale=scale, return_dict=False)  # a number would be baked in
        graphed.paused = True
        graphed(sample, torch.tensor(1.0), scale=scale, return_dict=False)
    graphed.paused = False
    graphed(sample, torch.tensor(1.0), scale=scale, return_dict=False)  # gradients on
    assert graphed.captures == 0 and capture.replays == 0


def tiny_backend(registry: ModelRegistry, capture: ReplayByRerunning | None) -> DiffusersBackend:
    manager = ModelManager(LoaderOptions(device="cpu"))
    backend = DiffusersBackend(registry, manager)
    if capture is not None:
        unet = manager.get(registry.get("tiny")).pipe.unet
        cuda_graphs.install(unet, (4, 8), capture=capture)  # 2 rows (guidance) pad to 4
    return backend


def draw(backend: DiffusersBackend, prompt: str = "a red fox", count: int = 1) -> list[Any]:
    request = backend.resolve(
        GenerationRequest(prompt=prompt, model="tiny", seed=5, count=count, steps=3)
    )
    return [out.image for out in backend.run(request, request.slots("job"), never_cancel)]


def test_a_graphed_unet_draws_the_same_images_through_the_pipelines(
    registry: ModelRegistry,
) -> None:
    capture = ReplayByRerunning()
    graphed = tiny_backend(registry, capture)
    eager = tiny_backend(registry, None)
    for count in (1, 3):  # 2 rows padded to 4; 6 rows padded to 8
        for mine, theirs in zip(draw(graphed, count=count), draw(eager, count=count), strict=True):
            # A padded batch may round differently in float32 matmuls: at most one level.
            assert max_pixel_difference(mine, theirs) <= 1
    assert capture.replays >= 6  # the steps went through the graphs


def test_graphs_pause_while_a_lora_is_on(registry: ModelRegistry, tmp_path: Path) -> None:
    write_tiny_lora("tiny", tmp_path / "ink.safetensors", seed=1)
    registry = ModelRegistry.loads(
        '[models.tiny]\nsource = "builtin:tiny"\n'
        '[loras.ink]\nsource = "./ink.safetensors"\nfamily = "sd15"\n',
        base_dir=tmp_path,
    )
    capture = ReplayByRerunning()
    graphed = tiny_backend(registry, capture)
    eager = tiny_backend(registry, None)
    unet = graphed.manager.get(registry.get("tiny")).pipe.unet
    forward = cuda_graphs.graphs_of(unet)
    assert forward is not None
    draw(graphed)
    replays = capture.replays
    with_lora = draw(graphed, "a fox <lora:ink:0.8>")
    assert forward.paused and capture.replays == replays  # PEFT ran eagerly
    assert max_pixel_difference(with_lora[0], draw(eager, "a fox <lora:ink:0.8>")[0]) == 0
    assert max_pixel_difference(with_lora[0], draw(eager)[0]) > 8  # the LoRA did change it
    after = draw(graphed)
    assert not forward.paused and capture.replays > replays  # recaptured without the LoRA
    assert max_pixel_difference(after[0], draw(eager)[0]) <= 1


def test_cuda_graphs_are_ignored_off_cuda(registry: ModelRegistry) -> None:
    manager = ModelManager(LoaderOptions(device="cpu", cuda_graphs=True))
    unet = manager.get(registry.get("tiny")).pipe.unet
    assert cuda_graphs.graphs_of(unet) is None


# --- FP8 --------------------------------------------------------------------------------------


def test_fp8_picks_the_large_linear_layers_of_the_blocks(registry: ModelRegistry) -> None:
    assert wants_fp8("down_blocks.1.attentions.0.proj_in", torch.nn.Linear(640, 640))
    assert wants_fp8(
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2", torch.nn.Linear(5120, 1280)
    )
    assert not wants_fp8("time_embedding.linear_1", torch.nn.Linear(320, 1280))
    assert not wants_fp8("add_embedding.linear_1", torch.nn.Linear(2816, 1280))
    assert not wants_fp8("down_blocks.0.resnets.0.time_emb_proj", torch.nn.Linear(1280, 320))
    assert not wants_fp8("x.proj", torch.nn.Linear(32, 32))  # too small to gain
    assert not wants_fp8("x.proj", torch.nn.Linear(648, 650))  # not 16-aligned
    assert not wants_fp8("x.conv", torch.nn.Conv2d(640, 640, 3))


def test_fp8_is_refused_clearly_where_it_cannot_run(registry: ModelRegistry) -> None:
    reason = fp8_refusal(torch.device("cpu"))
    assert reason is not None and "compute capability 8.9" in reason and "UNET_FP8" in reason
    unet = torch.nn.Sequential(torch.nn.Linear(640, 640))
    with pytest.raises(ModelLoadError, match="compute capability"):
        quantize_fp8(unet, torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="UNET_FP8"):
        ModelManager(LoaderOptions(device="cpu", fp8=True)).get(registry.get("tiny"))


def test_the_compile_cache_folder_is_where_inductor_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))  # restored after
    folder = tmp_path / "compiled"
    ModelManager(LoaderOptions(device="cpu", compile_cache_dir=folder))
    from torch._inductor.runtime.runtime_utils import cache_dir

    assert folder.is_dir() and Path(cache_dir()) == folder
