"""Discord rules that the OpenAPI spec does not encode, checked on every message body.

Each rule here is one Discord enforces at runtime (its answer is a 400 "Invalid Form Body"),
but that the published schema leaves out, usually because the schema is shared with
Nitro users or with Components V2 messages. The most common limits that the spec does encode
(custom_id length, five components a row) are repeated here so that they still bite when the
spec is unavailable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .spec import FieldError

MAX_CONTENT = 2000
MAX_EMBED_TOTAL = 6000
MAX_TOP_LEVEL_ROWS = 5
MAX_ROW_WIDTH = 5
MAX_CUSTOM_ID = 100
FLAG_COMPONENTS_V2 = 1 << 15
SELECT_TYPES = {3, 5, 6, 7, 8}
LINK_STYLE = 5
PREMIUM_STYLE = 6

Path = tuple[str | int, ...]


def _err(path: Path, message: str, code: str = "RULE") -> FieldError:
    return FieldError(path=path, code=code, message=message)


def _walk_components(components: Any, path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    if not isinstance(components, list):
        return
    for index, comp in enumerate(components):
        if not isinstance(comp, dict):
            continue
        here = (*path, index)
        yield comp, here
        yield from _walk_components(comp.get("components"), (*here, "components"))
        accessory = comp.get("accessory")
        if isinstance(accessory, dict):
            yield accessory, (*here, "accessory")
        inner = comp.get("component")
        if isinstance(inner, dict):
            yield inner, (*here, "component")


def check_message(body: Any, prefix: Path = ()) -> list[FieldError]:
    """Rules for a message-shaped body (create, edit, interaction message response)."""
    if not isinstance(body, dict):
        return []
    errors: list[FieldError] = []
    flags = body.get("flags") or 0
    is_v2 = bool(flags & FLAG_COMPONENTS_V2) if isinstance(flags, int) else False

    content = body.get("content")
    if isinstance(content, str) and len(content) > MAX_CONTENT:
        errors.append(
            _err(
                (*prefix, "content"),
                f"Must be {MAX_CONTENT} or fewer in length.",
                "BASE_TYPE_MAX_LENGTH",
            )
        )
    if is_v2 and (content or body.get("embeds")):
        errors.append(
            _err(
                (*prefix, "content"),
                "The 'content' and 'embeds' fields cannot be used with IS_COMPONENTS_V2.",
            )
        )

    embeds = body.get("embeds")
    if isinstance(embeds, list):
        total = 0
        for embed in embeds:
            if not isinstance(embed, dict):
                continue
            total += len(embed.get("title") or "") + len(embed.get("description") or "")
            total += len((embed.get("footer") or {}).get("text") or "")
            total += len((embed.get("author") or {}).get("name") or "")
            for fld in embed.get("fields") or []:
                if isinstance(fld, dict):
                    total += len(fld.get("name") or "") + len(fld.get("value") or "")
        if total > MAX_EMBED_TOTAL:
            errors.append(
                _err(
                    (*prefix, "embeds"),
                    f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}",
                    "MAX_EMBED_SIZE_EXCEEDED",
                )
            )

    components = body.get("components")
    if isinstance(components, list):
        errors.extend(_check_components(components, (*prefix, "components"), is_v2))
    return errors


def _check_components(components: list[Any], path: Path, is_v2: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    if not is_v2:
        if len(components) > MAX_TOP_LEVEL_ROWS:
            errors.append(
                _err(
                    path,
                    f"Must be {MAX_TOP_LEVEL_ROWS} or fewer in length.",
                    "BASE_TYPE_MAX_LENGTH",
                )
            )
        for index, comp in enumerate(components):
            if isinstance(comp, dict) and comp.get("type") != 1:
                errors.append(
                    _err(
                        (*path, index, "type"),
                        "Only action rows are allowed at the top level without IS_COMPONENTS_V2.",
                        "UNION_TYPE_CHOICES",
                    )
                )
    seen_ids: dict[str, Path] = {}
    for comp, here in _walk_components(components, path):
        ctype = comp.get("type")
        if ctype == 1:
            children = [c for c in comp.get("components") or [] if isinstance(c, dict)]
            if len(children) > MAX_ROW_WIDTH:  # also in the spec; kept for spec-less runs
                errors.append(
                    _err(
                        (*here, "components"),
                        f"Must be {MAX_ROW_WIDTH} or fewer in length.",
                        "BASE_TYPE_MAX_LENGTH",
                    )
                )
            if any(c.get("type") in SELECT_TYPES for c in children) and len(children) > 1:
                errors.append(
                    _err(
                        (*here, "components"),
                        "An action row with a select menu cannot hold other components.",
                        "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                    )
                )
        custom_id = comp.get("custom_id")
        if isinstance(custom_id, str) and len(custom_id) > MAX_CUSTOM_ID:
            errors.append(
                _err(
                    (*here, "custom_id"),
                    f"Must be {MAX_CUSTOM_ID} or fewer in length.",
                    "BASE_TYPE_MAX_LENGTH",
                )
            )
        if isinstance(custom_id, str):
            if custom_id in seen_ids:
                errors.append(
                    _err(
                        (*here, "custom_id"),
                        "Component custom id cannot be duplicated",
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                    )
                )
            seen_ids[custom_id] = here
        if ctype == 2:
            style = comp.get("style")
            if style == LINK_STYLE:
                if not comp.get("url"):
                    errors.append(_err((*here, "url"), "A link button requires a url."))
                if comp.get("custom_id"):
                    errors.append(
                        _err((*here, "custom_id"), "A link button cannot have a custom_id.")
                    )
            elif style == PREMIUM_STYLE:
                if not comp.get("sku_id"):
                    errors.append(_err((*here, "sku_id"), "A premium button requires a sku_id."))
            else:
                if not comp.get("custom_id"):
                    errors.append(
                        _err((*here, "custom_id"), "This field is required", "BASE_TYPE_REQUIRED")
                    )
                if comp.get("url"):
                    errors.append(_err((*here, "url"), "Only link buttons can have a url."))
            if style != PREMIUM_STYLE and not comp.get("label") and not comp.get("emoji"):
                errors.append(_err((*here, "label"), "A button requires a label or an emoji."))
    return errors


def check_autocomplete(body: Any, prefix: Path = ()) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        return errors
    choices = body.get("choices")
    if isinstance(choices, list) and len(choices) > 25:
        errors.append(
            _err((*prefix, "choices"), "Must be 25 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        )
    return errors
