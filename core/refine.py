"""Conversational refinement: "make it night", "add a red hat", "더 밝게" turn a result's
prompt into the next one. By rule by default; with an OpenAI-compatible chat endpoint
(``LLM_BASE_URL``) a language model rewrites the prompt, within a time limit, and the rule
answers whenever the model does not (down, slow, or saying something unusable)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp

from core.errors import N_, InvalidField

log = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS: Final = 500
MAX_PROMPT_CHARS: Final = 1500
EMPHASIS: Final = 1.3  # "more red": (red:1.3), the AUTOMATIC1111 emphasis the engine reads

# Korean words people use to ask for a change, in English for the text encoder (which reads
# English). Matched longest first, so "어둡게" is not read as "어둡" plus leftovers.
_KOREAN: Final = {
    "밝게": "bright",
    "밝은": "bright",
    "어둡게": "dark",
    "어두운": "dark",
    "밤": "night",
    "낮": "daytime",
    "새벽": "dawn",
    "노을": "sunset",
    "비": "rain",
    "눈": "snow",
    "안개": "fog",
    "빨간": "red",
    "빨갛게": "red",
    "파란": "blue",
    "파랗게": "blue",
    "초록": "green",
    "노란": "yellow",
    "검은": "black",
    "하얀": "white",
    "모자": "hat",
    "고양이": "cat",
    "개": "dog",
    "사람": "people",
    "사람들": "people",
    "꽃": "flowers",
    "바다": "sea",
    "산": "mountains",
    "선명하게": "sharp focus",
    "따뜻하게": "warm colors",
    "차갑게": "cool colors",
}
_KOREAN_LONGEST_FIRST: Final = sorted(_KOREAN.items(), key=lambda item: -len(item[0]))
_KOREAN_REMOVE = re.compile(r"(빼|없애|지워|제거|말고)")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")


@dataclass(frozen=True, slots=True)
class Refined:
    prompt: str
    negative_prompt: str
    by: Literal["rule", "llm"]


def refine_by_rule(prompt: str, negative: str, instruction: str) -> Refined:
    """The next prompt: the change appended, stressed ("more ..."), or moved to the negative
    prompt ("no ...", "remove ..."); Korean words known to ``_KOREAN`` read as English."""
    text = _plain(instruction)
    if _HANGUL.search(text):
        return _korean(prompt, negative, text)
    lowered = text.lower()
    match = re.match(
        r"^(?:no|without|remove|get rid of|drop|less|fewer)\s+(?:the\s+)?(.+)$", lowered
    )
    if match:
        return _without(prompt, negative, text[match.start(1) :])
    match = re.match(r"^(?:more|extra)\s+(.+)$", lowered)
    if match:
        return _with(prompt, negative, f"({text[match.start(1) :]}:{EMPHASIS:g})")
    match = re.match(
        r"^(?:make (?:it|the (?:image|picture|scene)|everything)|make|turn it|turn|set it)"
        r"\s+(?:into\s+|in\s+|at\s+|look\s+)?(.+)$",
        lowered,
    )
    if match is None:
        match = re.match(r"^(?:add|with|put|include|give it)\s+(.+)$", lowered)
    return _with(prompt, negative, text[match.start(1) :] if match else text)


def _plain(instruction: str) -> str:
    text = " ".join(instruction.split()).strip(" .!?。")
    text = re.sub(r"^(?:please|pls|can you|could you)\s+", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+please$", "", text, flags=re.IGNORECASE)
    if text.lower() in {"please", "pls", "thanks", "thank you"}:
        text = ""
    if not text:
        raise InvalidField("instruction", N_("Say what to change, such as “make it night”."))
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InvalidField(
            "instruction",
            N_("Say what to change in at most {most} characters."),
            most=MAX_INSTRUCTION_CHARS,
        )
    return text


def _korean(prompt: str, negative: str, text: str) -> Refined:
    words = [english for korean, english in _KOREAN_LONGEST_FIRST if korean in text]
    # Each English word once, in the order of the table (longer Korean forms first).
    found = list(dict.fromkeys(words))
    if not found:
        return _with(prompt, negative, text)  # unknown words: kept, for a reader (or an LLM)
    change = ", ".join(found)
    if _KOREAN_REMOVE.search(text):
        return _without(prompt, negative, change)
    if "더" in text.split() or text.startswith("더"):
        change = ", ".join(f"({word}:{EMPHASIS:g})" for word in found)
    return _with(prompt, negative, change)


def _with(prompt: str, negative: str, change: str) -> Refined:
    joined = f"{prompt.rstrip(' ,')}, {change}" if prompt.strip() else change
    return Refined(joined[:MAX_PROMPT_CHARS], negative, "rule")


def _without(prompt: str, negative: str, unwanted: str) -> Refined:
    kept = re.sub(rf"\s*,?\s*\b{re.escape(unwanted)}\b", "", prompt, flags=re.IGNORECASE)
    kept = kept.strip(" ,") or prompt
    joined = f"{negative.rstrip(' ,')}, {unwanted}" if negative.strip() else unwanted
    return Refined(kept, joined[:MAX_PROMPT_CHARS], "rule")


_SYSTEM = (
    "You rewrite Stable Diffusion prompts. Given a prompt, a negative prompt and a change the "
    "user asks for (in any language), answer with JSON only: "
    '{"prompt": "...", "negative_prompt": "..."} in English, keeping everything the change '
    "does not touch. Keep AUTOMATIC1111 syntax such as (word:1.3) as it is."
)


class Refiner:
    """Refines by the LLM endpoint when one is set, else (and on any failure) by rule."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        model: str = "default",
        api_key: str | None = None,
        timeout_s: float = 8.0,
    ) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s

    async def refine(self, prompt: str, negative: str, instruction: str) -> Refined:
        rule = refine_by_rule(prompt, negative, instruction)  # also validates the instruction
        if self.base_url is None:
            return rule
        try:
            return await self._ask(prompt, negative, _plain(instruction))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
            # Never the key or the prompt in the log: the endpoint and what went wrong.
            log.warning("LLM refinement failed (%s); using the rule", type(error).__name__)
            return rule

    async def _ask(self, prompt: str, negative: str, instruction: str) -> Refined:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = {
            "model": self.model,
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": _SYSTEM},
                {
                    "role": "user",
                    "content": json.dumps(
                        {"prompt": prompt, "negative_prompt": negative, "change": instruction},
                        ensure_ascii=False,
                    ),
                },
            ],
        }
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.post(f"{self.base_url}/chat/completions", json=body, headers=headers) as answer,
        ):
            answer.raise_for_status()
            reply = await answer.json(content_type=None)
        content = str(reply["choices"][0]["message"]["content"]).strip()
        content = re.sub(r"^```(?:json)?\s*|\s*```$", "", content)  # a fenced answer
        data = json.loads(content)
        new_prompt = str(data["prompt"]).strip()
        new_negative = str(data.get("negative_prompt", negative)).strip()
        if (
            not new_prompt
            or len(new_prompt) > MAX_PROMPT_CHARS
            or len(new_negative) > MAX_PROMPT_CHARS
        ):
            raise ValueError("unusable prompt")
        return Refined(new_prompt, new_negative, "llm")
