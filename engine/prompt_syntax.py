"""The AUTOMATIC1111 web UI's prompt emphasis syntax, read into weighted pieces of text. Pure
logic: no torch.

- ``(words)`` multiplies the weight of ``words`` by 1.1, ``((words))`` by 1.21, and so on;
- ``[words]`` divides it by 1.1;
- ``(words:1.3)`` multiplies it by 1.3 (``(words:0.5)`` weakens it);
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the characters themselves;
- ``BREAK`` (in capitals, as a word) starts a new 75-token chunk of the text encoder;
- a bracket left open applies to the rest of the prompt; a closing one with nothing open is
  plain text.

So a prompt written for that UI means the same here, and the PNG metadata (which keeps the
prompt as written) means the same there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

Piece = tuple[str, float]  # some text and its weight
Part = list[Piece]  # the text between two BREAKs

EMPHASIS: Final = 1.1
# A prompt is encoded in chunks of the text encoder's window (75 tokens with SD's CLIP); this
# many at most: 300 tokens, far beyond what a model follows, and bounded in memory.
MAX_CHUNKS: Final = 4
MAX_WEIGHT: Final = 100.0  # a weight beyond this is a typo, not an intent

_TOKENS = re.compile(
    r"""
    \\[()\[\]\\]                          # an escaped bracket or backslash
    | \(
    | \[
    | :\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # the end of (words:1.3)
    | \)
    | \]
    | [^\\()\[\]:]+                       # plain text
    | [\\:]                               # a lone backslash or colon: plain text
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse(text: str) -> list[Part]:
    """``text`` as parts (split at BREAK) of weighted pieces; neighbours of equal weight are
    joined. An empty prompt is one part with one empty piece."""
    pieces: list[list[object]] = []  # [text, weight], mutable while brackets close
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] = float(piece[1]) * factor  # type: ignore[arg-type]

    for match in _TOKENS.finditer(text):
        token = match.group(0)
        weight = match.group("weight")
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), min(MAX_WEIGHT, max(-MAX_WEIGHT, float(weight))))
        elif token == ")" and round_open:
            scale(round_open.pop(), EMPHASIS)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / EMPHASIS)
        else:
            pieces.append([token, 1.0])
    for start in round_open:
        scale(start, EMPHASIS)
    for start in square_open:
        scale(start, 1 / EMPHASIS)

    parts: list[Part] = [[]]
    for raw_text, raw_weight in pieces:
        weight = float(raw_weight)  # type: ignore[arg-type]
        for n, chunk in enumerate(_BREAK.split(str(raw_text))):
            if n > 0:
                parts.append([])
            if chunk:
                _append(parts[-1], chunk, weight)
    return [part or [("", 1.0)] for part in parts]


def _append(part: Part, text: str, weight: float) -> None:
    if part and part[-1][1] == weight:
        part[-1] = (part[-1][0] + text, weight)
    else:
        part.append((text, weight))


_LORA_TAG = re.compile(r"<lora:([^:<>]{1,64})(?::\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*)?>", re.I)


def extract_loras(text: str) -> tuple[str, list[tuple[str, float | None]]]:
    """``text`` without its ``<lora:name:weight>`` tags, and the tags' (name, weight) in
    order (weight None where the tag gives none)."""
    found = [
        (match[1].strip(), None if match[2] is None else float(match[2]))
        for match in _LORA_TAG.finditer(text)
    ]
    remaining = _LORA_TAG.sub(" ", text)
    return (re.sub(r"[ \t]{2,}", " ", remaining).strip() if found else text), found


def chunk_count(text: str, count_tokens: Callable[[str], int], window: int) -> int:
    """How many chunks of ``window`` tokens the text encoder reads for ``text``: each part
    between BREAKs starts a chunk of its own; at most ``MAX_CHUNKS``."""
    chunks = 0
    for part in parse(text):
        tokens = sum(count_tokens(piece) for piece, _ in part)
        chunks += max(1, -(-tokens // window))
    return min(chunks, MAX_CHUNKS)


def plain_text(text: str) -> str:
    """What the prompt says without its syntax: for a model that cannot weigh words."""
    return " ".join("".join(piece for piece, _ in part).strip() for part in parse(text)).strip()


def uses_syntax(text: str) -> bool:
    """Whether reading ``text`` as plain words would differ from reading it with weights."""
    return parse(text) != [[(text, 1.0)]] and bool(text)
