"""One module per operation; each is a plain function ``(OpContext) -> list[Image | None]``."""

from __future__ import annotations

from collections.abc import Callable

from engine.ops.common import OpContext, OpResult
from engine.ops.img2img import img2img
from engine.ops.inpaint import inpaint
from engine.ops.outpaint import outpaint
from engine.ops.txt2img import txt2img
from engine.ops.upscale import upscale
from engine.ops.variation import variation
from engine.types import Operation

OPERATIONS: dict[Operation, Callable[[OpContext], OpResult]] = {
    Operation.TXT2IMG: txt2img,
    Operation.IMG2IMG: img2img,
    Operation.VARIATION: variation,
    Operation.UPSCALE: upscale,
    Operation.INPAINT: inpaint,
    Operation.OUTPAINT: outpaint,
}

__all__ = ["OPERATIONS", "OpContext", "OpResult"]
