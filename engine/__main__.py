"""Operator command line: check a GPU and a model before connecting Discord.

    python -m engine models
    python -m engine generate "a red fox in snow" --model tiny --count 4 --seed 42 --out out/

Errors print one line that says what to do, and exit with status 1 (no traceback unless
``--debug``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError, HubUnreachableError, Interrupted, OutOfMemory
from engine.registry import ASPECT_RATIOS, SCHEDULERS, ModelRegistry
from engine.types import MAX_IMAGES_PER_REQUEST, GenerationRequest, Operation, StepInfo

if TYPE_CHECKING:
    from engine.backend import DiffusersBackend
    from engine.types import GeneratedImage, ResolvedRequest

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


PROG = "python -m engine"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line's parser; ``prog`` is the name usage lines show (the bot's
    ``diffusion-chat generate`` passes its own)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Diffusion Chat's image engine, from the command line.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the models in the registry")
    models.add_argument("--models-file", type=Path, help="registry TOML (default: bundled)")

    generate = commands.add_parser("generate", help="generate images and write them as PNG")
    generate.add_argument("prompt", help="what to draw")
    generate.add_argument("--model", help="registry name (default: the registry's default)")
    generate.add_argument("--models-file", type=Path, help="registry TOML (default: bundled)")
    generate.add_argument(
        "--count", type=int, default=1, help=f"images, 1 to {MAX_IMAGES_PER_REQUEST}"
    )
    generate.add_argument("--seed", type=int, help="seed of the first image (default: random)")
    generate.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    generate.add_argument(
        "--steps",
        type=int,
        help="denoising steps (default: the model's); image operations raise them to at "
        "least one step at their strength",
    )
    generate.add_argument(
        "--guidance", type=float, help="prompt adherence, 0 to 30 (default: the model's)"
    )
    generate.add_argument(
        "--width", type=int, help="image width in pixels, a multiple of 8 (default: model's)"
    )
    generate.add_argument(
        "--height", type=int, help="image height in pixels, a multiple of 8 (default: model's)"
    )
    generate.add_argument(
        "--aspect", choices=ASPECT_RATIOS, help="aspect ratio at the model's size (txt2img)"
    )
    generate.add_argument("--negative", default="", help="negative prompt")
    generate.add_argument(
        "--scheduler", choices=sorted(SCHEDULERS), help="sampler (default: the model's)"
    )
    generate.add_argument(
        "--operation",
        choices=[op.value for op in Operation],
        default=Operation.TXT2IMG.value,
        help="what to do (default: txt2img); all but txt2img need --init",
    )
    generate.add_argument("--init", type=Path, help="input image (img2img, variation, ...)")
    generate.add_argument("--mask", type=Path, help="inpainting mask: white = repaint")
    generate.add_argument("--strength", type=float, help="denoising strength, 0 to 1")
    generate.add_argument(
        "--variation", choices=["subtle", "strong"], help="variation: how far to stray"
    )
    generate.add_argument(
        "--sides",
        nargs="*",
        choices=["left", "right", "top", "bottom"],
        default=[],
        help="outpaint: sides to extend (default: all four)",
    )
    generate.add_argument("--pixels", type=int, default=128, help="outpaint: pixels per side")
    generate.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    generate.add_argument("--dtype", help="float16, bfloat16 or float32")
    generate.add_argument("--cpu-offload", action="store_true", help="for GPUs with little memory")
    generate.add_argument("--local-files-only", action="store_true", help="never download")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "models":
            return list_models(args)
        return generate(args)
    except HubUnreachableError as error:
        _fail(
            f"Cannot reach the Hugging Face hub ({error.reason}) to download {error.label!r} "
            f"({error.repo_id}). Check the network connection (and HTTPS_PROXY behind a "
            "proxy). If the model is already downloaded, add --local-files-only (or set "
            "HF_HUB_OFFLINE=1); to try the engine without a download, use --model tiny "
            "(random weights: its images are noise)."
        )
    except OutOfMemory as error:
        _fail(f"{error} Try --count 1, a smaller --width/--height, or --cpu-offload.")
    except EngineError as error:
        _fail(str(error))
    except Interrupted:
        _fail("Cancelled.")
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            raise
        _fail(f"unexpected {type(error).__name__}: {error} (run with --debug for details)")
    return EXIT_FAILED


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def list_models(args: argparse.Namespace) -> int:
    registry = ModelRegistry.load(args.models_file)
    for spec in registry.specs():
        default = " (default)" if spec.name == registry.default_name else ""
        noise = "  [random weights: output is noise]" if spec.is_builtin else ""
        print(f"{spec.name}{default}{noise}")
        print(f"    {spec.description}")
        print(f"    family {spec.family.value}, source {spec.source}")
        presets = spec.presets
        print(
            f"    {presets.width}x{presets.height}, {presets.steps} steps "
            f"(max {presets.max_steps}), guidance {presets.guidance:g}, {presets.scheduler}, "
            f"sizes {presets.min_size}-{presets.max_size}"
        )
        print(f"    licence: {spec.license}")
    return EXIT_OK


def generate(args: argparse.Namespace) -> int:
    registry = ModelRegistry.load(args.models_file)
    registry.get(args.model)  # an unknown name fails before the slow imports
    _check_writable(args.out)  # and so does an output folder that cannot be written
    # transformers warns about optional image-processing backends the engine never uses.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    request = GenerationRequest(
        prompt=args.prompt,
        model=args.model,
        operation=Operation(args.operation),
        negative_prompt=args.negative,
        count=args.count,
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
        aspect=args.aspect,
        scheduler=args.scheduler,
        seed=args.seed,
        strength=args.strength,
        variation=args.variation,
        init_image=_read_input(args.init, "input image"),
        mask_image=_read_input(args.mask, "mask"),
        outpaint_sides=tuple(args.sides),
        outpaint_pixels=args.pixels,
    )
    started = time.perf_counter()
    backend = _build_backend(registry, args)  # imports torch: after the cheap checks above
    resolved = backend.resolve(request)
    spec = registry.get(resolved.model)
    manager = backend.manager
    dtype_name = str(manager.dtype).removeprefix("torch.")
    print(f"device: {manager.device} ({dtype_name})", file=sys.stderr)
    if manager.on_cpu:
        note = " (fine for the tiny test models)" if spec.is_builtin else ""
        print(f"note: no GPU found; running on CPU, this will be slow{note}", file=sys.stderr)
    if spec.is_builtin:
        print(f"note: {spec.name} has random weights: its images are noise", file=sys.stderr)
    if resolved.prompt_truncated:
        print("note: the prompt was cut to what the text encoder reads", file=sys.stderr)

    load_started = time.perf_counter()
    backend.load(resolved.model, lambda detail: print(detail, file=sys.stderr))
    load_s = time.perf_counter() - load_started

    generate_started = time.perf_counter()
    images = _run_with_progress(backend, resolved)
    generate_s = time.perf_counter() - generate_started

    from engine.images import encode_png, make_grid

    for index, image in enumerate(images, start=1):
        path = args.out / f"{index:02d}-{image.seed}.png"
        path.write_bytes(image.png_bytes())
        print(f"seed {image.seed}: {path}")
    grid_path = args.out / "grid.png"
    grid = make_grid([image.image for image in images])
    grid_path.write_bytes(encode_png(grid, images[0].parameters))
    print(f"grid: {grid_path}")
    total_s = time.perf_counter() - started
    per_image = generate_s / len(images)
    print(
        f"timings: load {load_s:.2f}s, generate {generate_s:.2f}s ({per_image:.2f}s per image, "
        f"{resolved.steps} steps), total {total_s:.2f}s"
    )
    return EXIT_OK


def _check_writable(folder: Path) -> None:
    """Create ``folder`` if need be and prove a file can be written in it, before minutes
    of loading and generating are spent on images that could not be saved."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise EngineError(
            f"Cannot write to the output folder {folder} ({error.strerror or error}). "
            "Choose another with --out, or fix its permissions."
        ) from None


def _read_input(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise EngineError(f"Cannot read the {what} {path}: {error.strerror or error}") from None


def _build_backend(registry: ModelRegistry, args: argparse.Namespace) -> DiffusersBackend:
    from engine.backend import DiffusersBackend
    from engine.loader import LoaderOptions, ModelManager

    options = LoaderOptions(
        device=args.device,
        dtype=args.dtype,
        cpu_offload=args.cpu_offload,
        local_files_only=args.local_files_only,
    )
    return DiffusersBackend(registry, ModelManager(options))


def _run_with_progress(backend: DiffusersBackend, request: ResolvedRequest) -> list[GeneratedImage]:
    from tqdm import tqdm

    bar = tqdm(total=request.steps, desc="denoising", unit="step", file=sys.stderr, leave=False)

    def on_step(info: StepInfo) -> frozenset[str]:
        if bar.total != info.total:
            bar.total = info.total
        bar.update(info.step - bar.n)
        return frozenset()

    try:
        outputs = backend.run(request, request.slots("cli"), on_step)
    finally:
        bar.close()
    return [image for image in outputs if image is not None]


if __name__ == "__main__":
    sys.exit(main())
