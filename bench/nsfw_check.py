"""The image check's cost per image (issue 18): the default classifier's architecture (a
ViT-base at 224 px, as Falconsai/nsfw_image_detection; random weights, since the cost does
not depend on them) loaded through the bot's own code, scoring batches of 512 px and
1024 px images as the engine hands them over after a pipeline call.

    python -m bench.nsfw_check [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.common import (
    Report,
    add_record_args,
    describe_machine,
    ms,
    quiet_libraries,
    record_path,
    summarize,
)
from engine.safety import NsfwClassifier


def save_vit_base(folder: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "normal", 1: "nsfw"}
    config = ViTConfig(id2label=labels, label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def pictures(count: int, size: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(count * size)
    return [
        Image.fromarray(
            torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8).numpy()
        )
        for _ in range(count)
    ]


def run(args: argparse.Namespace) -> None:
    quiet_libraries()
    report = Report("The image check's cost per image", describe_machine(args.device))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        check = NsfwClassifier(str(save_vit_base(Path(folder) / "vit-base")), device=args.device)
        check.scores(pictures(1, 64))  # loads the model
        load_s = time.perf_counter() - started
        rows = []
        for size in (512, 1024):
            for batch in (1, 4, 8):
                images = pictures(batch, size)
                check.scores(images)  # warm
                times = []
                for _ in range(args.rounds):
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    began = time.perf_counter()
                    check.scores(images)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - began)
                stats = summarize(times)
                rows.append(
                    [
                        f"{size} px",
                        str(batch),
                        ms(stats.median),
                        ms(stats.median / batch),
                        ms(min(times) / batch),
                    ]
                )
    report.table(
        ["images", "batch", "median ms a batch", "ms an image", "fastest ms an image"], rows
    )
    report.text(
        f"Loading the classifier (written and read back, ViT-base, 86 M parameters): "
        f"{load_s:.1f} s, in the background while the engine starts."
    )
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    add_record_args(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
