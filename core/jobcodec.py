"""A generation request as the JSON text stored with its job. Input images are kept in the
image store and referenced by key, so a job row stays small and a restart can rebuild it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from engine.types import GenerationRequest, Operation

_IMAGE_FIELDS = ("init_image", "mask_image")


@dataclass(frozen=True, slots=True)
class StoredRequest:
    request: GenerationRequest  # without image bytes
    init_image_key: str | None = None
    mask_image_key: str | None = None
    # How it was accepted, kept for a resume: its queue tier, and the requester's roles (for
    # the quota footer under the result).
    priority: int = 0
    role_ids: tuple[int, ...] = ()
    # The settings the user chose (the others took the model's presets), for usage figures.
    explicit: tuple[str, ...] = ()
    style: str | None = None  # the style applied (request.prompt is the styled prompt)
    locale: str | None = None  # the language its messages are written in (None: English)
    # Asked in a channel Discord marks age-restricted: the image check lets its images through.
    age_restricted: bool = False

    def dumps(self) -> str:
        fields = {
            f.name: getattr(self.request, f.name)
            for f in dataclasses.fields(GenerationRequest)
            if f.name not in _IMAGE_FIELDS
        }
        fields["operation"] = self.request.operation.value
        fields["outpaint_sides"] = list(self.request.outpaint_sides)
        fields["prompts"] = list(self.request.prompts)
        fields["loras"] = [list(lora) for lora in self.request.loras]
        fields["init_image_key"] = self.init_image_key
        fields["mask_image_key"] = self.mask_image_key
        fields["priority"] = self.priority
        fields["role_ids"] = list(self.role_ids)
        fields["explicit"] = list(self.explicit)
        fields["style"] = self.style
        fields["locale"] = self.locale
        fields["age_restricted"] = self.age_restricted
        return json.dumps(fields, ensure_ascii=False, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> StoredRequest:
        data: dict[str, Any] = json.loads(text)
        init_key = data.pop("init_image_key", None)
        mask_key = data.pop("mask_image_key", None)
        priority = int(data.pop("priority", 0))
        role_ids = tuple(int(role_id) for role_id in data.pop("role_ids", ()))
        explicit = tuple(str(name) for name in data.pop("explicit", ()))
        style = data.pop("style", None)
        locale = data.pop("locale", None)
        age_restricted = bool(data.pop("age_restricted", False))
        known = {f.name for f in dataclasses.fields(GenerationRequest)}
        # Fields written by a newer version are ignored rather than failing the resume.
        kwargs = {k: v for k, v in data.items() if k in known and k not in _IMAGE_FIELDS}
        kwargs["operation"] = Operation(kwargs.get("operation", Operation.TXT2IMG))
        kwargs["outpaint_sides"] = tuple(kwargs.get("outpaint_sides", ()))
        kwargs["prompts"] = tuple(str(prompt) for prompt in kwargs.get("prompts", ()))
        kwargs["loras"] = tuple(
            (str(name), None if weight is None else float(weight))
            for name, weight in kwargs.get("loras", ())
        )
        return cls(
            GenerationRequest(**kwargs),
            init_key,
            mask_key,
            priority,
            role_ids,
            explicit,
            style,
            locale,
            age_restricted,
        )
