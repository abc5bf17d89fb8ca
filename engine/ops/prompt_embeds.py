"""Prompt embeddings that read the AUTOMATIC1111 emphasis syntax and prompts longer than the
text encoder's 77-token window, for SD 1.5 and SDXL.

A prompt is cut into chunks of 75 tokens; each chunk is encoded on its own between the start
and end marks, exactly as diffusers encodes a short prompt, and the chunks' hidden states are
joined along the sequence (the UNet's cross-attention takes any length). Weighted tokens have
their hidden states scaled, then the whole is rescaled to its original mean, as that UI does,
so emphasis shifts attention without changing the overall magnitude. SDXL's pooled embedding
comes from the first chunk.

A batch where every prompt is plain and short is left to the pipeline's own encoding. Once
one prompt needs this, every prompt of the batch is encoded here, padded with empty chunks
to one length: for a plain short prompt the result equals the pipeline's (tested), so users
batched together do not change each other's images.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
from diffusers.utils.torch_utils import get_module_execution_device

from engine.prompt_syntax import MAX_CHUNKS, parse, plain_text, uses_syntax

CHUNK_TOKENS: Final = 75  # the window less its start and end marks
RESCALE_RANGE: Final = (0.5, 2.0)
CACHE_ENTRIES: Final = 64  # a few MB each at most; reused by rerolls and batched repeats


@dataclass(frozen=True, slots=True)
class Embedding:
    hidden: torch.Tensor  # (chunks * 77, width)
    pooled: torch.Tensor | None  # (pooled width,) for SDXL


@dataclass(frozen=True, slots=True)
class _TextEncoder:
    tokenizer: Any
    model: torch.nn.Module
    xl: bool  # SDXL reads the penultimate layer and pools

    @property
    def window(self) -> int:
        length = int(getattr(self.tokenizer, "model_max_length", CHUNK_TOKENS + 2))
        return length - 2 if 0 < length - 2 < 10_000 else CHUNK_TOKENS

    def chunks(self, text: str) -> tuple[list[list[int]], list[list[float]]]:
        """Token ids and weights per chunk; each BREAK starts a new chunk."""
        ids: list[list[int]] = []
        weights: list[list[float]] = []
        for part in parse(text):
            part_ids: list[int] = []
            part_weights: list[float] = []
            for piece, weight in part:
                tokens = self.tokenizer(piece, add_special_tokens=False, truncation=False)
                part_ids += tokens["input_ids"]
                part_weights += [weight] * len(tokens["input_ids"])
            size = self.window
            starts = range(0, max(1, len(part_ids)), size)
            ids += [part_ids[n : n + size] for n in starts]
            weights += [part_weights[n : n + size] for n in starts]
        return ids[:MAX_CHUNKS], weights[:MAX_CHUNKS]

    def encode(
        self, chunks: list[list[int]], weights: list[list[float]], length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Hidden states (chunks, window + 2, width) for ``length`` chunks (empty ones added),
        each position's weight, and, where the model pools, the first chunk's pooled output."""
        tokenizer = self.tokenizer
        size = self.window
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        rows, scales, masks = [], [], []
        for n in range(length):
            body = chunks[n] if n < len(chunks) else []
            weight = weights[n] if n < len(weights) else []
            filler = size - len(body)
            rows.append([tokenizer.bos_token_id, *body, tokenizer.eos_token_id] + [pad] * filler)
            scales.append([1.0, *weight, 1.0] + [1.0] * filler)
            masks.append([1] * (len(body) + 2) + [0] * filler)
        device = get_module_execution_device(self.model)
        input_ids = torch.tensor(rows, dtype=torch.long, device=device)
        pooled = None
        if self.xl:
            output = self.model(input_ids, output_hidden_states=True)
            hidden = output.hidden_states[-2]
            if output[0].ndim == 2:
                pooled = output[0][0]
        else:
            mask = None
            if getattr(self.model.config, "use_attention_mask", False):
                mask = torch.tensor(masks, device=device)
            hidden = self.model(input_ids, attention_mask=mask)[0]
        factors = torch.tensor(scales, dtype=hidden.dtype, device=hidden.device)
        return hidden, factors.unsqueeze(-1), pooled


class PromptEncoder:
    """One model's text encoders, with the embeddings of recent prompts."""

    def __init__(self, encoders: list[_TextEncoder]) -> None:
        self._encoders = encoders
        self._cache: OrderedDict[str, Embedding] = OrderedDict()

    @property
    def pools(self) -> bool:
        return any(encoder.xl for encoder in self._encoders)

    def needs(self, text: str) -> bool:
        """Whether the pipeline's own encoding would read ``text`` differently."""
        if uses_syntax(text):
            return True
        first = self._encoders[0]
        tokens = first.tokenizer(text, add_special_tokens=False, truncation=False)
        return len(tokens["input_ids"]) > first.window

    def encode(self, text: str) -> Embedding:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        per_encoder = [encoder.chunks(text) for encoder in self._encoders]
        length = max(len(ids) for ids, _ in per_encoder)
        hidden_states, weighted, pooled = [], [], None
        with torch.no_grad():
            for encoder, (ids, weights) in zip(self._encoders, per_encoder, strict=True):
                hidden, factors, pooled_here = encoder.encode(ids, weights, length)
                hidden_states.append(hidden)
                weighted.append(hidden * factors)
                pooled = pooled if pooled is not None else pooled_here
        joined = torch.cat(weighted, dim=-1)
        if not torch.equal(joined, original := torch.cat(hidden_states, dim=-1)):
            joined = _rescaled(joined, original)
        embedding = Embedding(joined.reshape(-1, joined.shape[-1]), pooled)
        self._cache[text] = embedding
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return embedding

    def forget(self) -> None:
        self._cache.clear()

    def padded(self, embedding: Embedding, length: int) -> torch.Tensor:
        """``embedding``'s hidden states with empty chunks added up to ``length`` rows."""
        missing = length - embedding.hidden.shape[0]
        if missing <= 0:
            return embedding.hidden
        empty = self.encode("").hidden
        repeats = missing // empty.shape[0]
        return torch.cat([embedding.hidden, empty.repeat(repeats, 1)], dim=0)


_ATTRIBUTE: Final = "_diffusion_chat_prompt_encoder"


def encoder_for(pipe: Any) -> PromptEncoder | None:
    """The prompt encoder of ``pipe``'s text encoders (shared by every pipeline built from
    the same components), or None for a pipeline without a CLIP text encoder."""
    xl = getattr(pipe, "text_encoder_2", None) is not None
    pairs = [
        (getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
        (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
    ]
    encoders = [
        _TextEncoder(tokenizer, model, xl)
        for tokenizer, model in pairs
        if tokenizer is not None and model is not None
    ]
    if not encoders:
        return None
    # Kept on the text encoder itself: it lives exactly as long as the model's weights.
    owner = encoders[0].model
    found = getattr(owner, _ATTRIBUTE, None)
    if not isinstance(found, PromptEncoder):
        found = PromptEncoder(encoders)
        object.__setattr__(owner, _ATTRIBUTE, found)
    return found


def forget_embeddings(pipe: Any) -> None:
    """Drop the embeddings kept for ``pipe``'s text encoders (their weights changed)."""
    model = getattr(pipe, "text_encoder", None) or getattr(pipe, "text_encoder_2", None)
    found = getattr(model, _ATTRIBUTE, None)
    if isinstance(found, PromptEncoder):
        found.forget()


def prompt_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str]) -> dict[str, Any]:
    """The prompt arguments of one pipeline call: the texts themselves when the pipeline
    reads them as meant, else embeddings made here."""
    encoder = encoder_for(pipe)
    texts = [*prompts, *negatives]
    if encoder is None:
        return {
            "prompt": [plain_text(t) for t in prompts],
            "negative_prompt": [plain_text(t) for t in negatives],
        }
    if not any(encoder.needs(text) for text in texts):
        return {"prompt": list(prompts), "negative_prompt": list(negatives)}
    positive = [encoder.encode(text) for text in prompts]
    negative = [encoder.encode(text) for text in negatives]
    length = max(e.hidden.shape[0] for e in positive + negative)
    arguments: dict[str, Any] = {
        "prompt_embeds": torch.stack([encoder.padded(e, length) for e in positive]),
        "negative_prompt_embeds": torch.stack([encoder.padded(e, length) for e in negative]),
    }
    if encoder.pools:
        arguments["pooled_prompt_embeds"] = torch.stack([_pooled(e) for e in positive])
        arguments["negative_pooled_prompt_embeds"] = torch.stack([_pooled(e) for e in negative])
    return arguments


def _rescaled(weighted: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``weighted`` brought back to ``original``'s mean (over both encoders' states)."""
    ratio = float(original.float().mean() / weighted.float().mean())
    # Near a zero mean the ratio is noise; real CLIP states keep it within a few per cent.
    if math.isfinite(ratio) and RESCALE_RANGE[0] <= ratio <= RESCALE_RANGE[1]:
        return weighted * ratio
    return weighted


def _pooled(embedding: Embedding) -> torch.Tensor:
    if embedding.pooled is None:
        raise ValueError("this model's text encoders give no pooled embedding")
    return embedding.pooled
