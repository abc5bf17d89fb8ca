"""Validation of request bodies against Discord's official OpenAPI spec.

The spec is located by the ``DISCORD_OPENAPI_SPEC`` environment variable, or else at the
copy vendored in ``tests/fakediscord/discord-api-spec/`` (Discord's official spec, MIT).
When neither exists, validation is disabled and :func:`spec_unavailable_reason` says why.

Deliberate leniencies (Discord accepts these, the spec does not say so):

* ``SnowflakeType`` also accepts non-negative integers: discord.py sends attachment ids as
  the integer index of the uploaded file (``{"id": 0, "filename": ...}``), which Discord takes.
"""

from __future__ import annotations

import copy
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_ENV_VAR = "DISCORD_OPENAPI_SPEC"
# Vendored (MIT, licence beside it) so every clone validates what the bot sends.
SPEC_RELATIVE_PATH = Path("tests") / "fakediscord" / "discord-api-spec" / "openapi.json"
_SPEC_URI = "urn:discord-openapi-spec"


def project_root() -> Path:
    """The folder holding ``pyproject.toml`` above this file."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return here.parents[2]


def spec_path() -> Path:
    """Where the spec is expected (it may not exist)."""
    configured = os.environ.get(SPEC_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return (project_root() / SPEC_RELATIVE_PATH).resolve()


def spec_unavailable_reason() -> str | None:
    """``None`` when the spec can be loaded, else a human-readable reason."""
    path = spec_path()
    if not path.is_file():
        how = f"${SPEC_ENV_VAR}" if os.environ.get(SPEC_ENV_VAR) else str(SPEC_RELATIVE_PATH)
        return (
            f"Discord OpenAPI spec not found at {path} (from {how}); request bodies are NOT "
            f"validated. Set {SPEC_ENV_VAR} or check out discord-api-spec next to the project."
        )
    return None


@dataclass(frozen=True)
class FieldError:
    """One problem in a body, at a JSON path like ``data.components.0.custom_id``."""

    path: tuple[str | int, ...]
    code: str
    message: str

    @property
    def dotted(self) -> str:
        return ".".join(str(p) for p in self.path) or "<body>"

    def __str__(self) -> str:
        return f"{self.dotted}: {self.message}"


@dataclass
class ValidationResult:
    errors: list[FieldError] = field(default_factory=list)

    def __bool__(self) -> bool:  # truthy when valid
        return not self.errors

    def discord_errors(self) -> dict[str, Any]:
        """The nested ``errors`` object of a Discord 50035 "Invalid Form Body" answer."""
        return discord_error_tree(self.errors)


def discord_error_tree(errors: list[FieldError]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for err in errors:
        node = tree
        for part in err.path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": err.code, "message": err.message})
    return tree


def _discord_code(error: ValidationError) -> tuple[str, str]:
    v = error.validator
    val = error.validator_value
    if v in ("maxLength", "maxItems"):
        return "BASE_TYPE_MAX_LENGTH", f"Must be {val} or fewer in length."
    if v in ("minLength", "minItems"):
        return "BASE_TYPE_MIN_LENGTH", f"Must be {val} or more in length."
    if v == "required":
        return "BASE_TYPE_REQUIRED", "This field is required"
    if v in ("maximum", "exclusiveMaximum"):
        return "NUMBER_TYPE_MAX", f"Int value should be less than or equal to {val}."
    if v in ("minimum", "exclusiveMinimum"):
        return "NUMBER_TYPE_MIN", f"Int value should be greater than or equal to {val}."
    if v in ("enum", "const"):
        return "BASE_TYPE_CHOICES", f"Value must be one of {val!r}."
    if v == "type":
        return "BASE_TYPE_BAD_TYPE", f"Value must be of type {val}."
    return "SCHEMA_VALIDATION", error.message


def _is_discriminator_mismatch(err: ValidationError) -> bool:
    return err.validator in ("enum", "const") and list(err.relative_path) == ["type"]


def _is_type_mismatch(err: ValidationError) -> bool:
    return err.validator == "type" and not list(err.relative_path)


def _relevant_leaves(err: ValidationError) -> list[ValidationError]:
    """Leaf errors of a union error, keeping the branches whose ``type`` matched."""
    if not err.context:
        return [err]
    branches: dict[Any, list[ValidationError]] = defaultdict(list)
    for sub in err.context:
        branches[sub.relative_schema_path[0] if sub.relative_schema_path else None].append(sub)
    matching = [b for b in branches.values() if not any(_is_discriminator_mismatch(e) for e in b)]
    chosen = matching or list(branches.values())
    # Drop branches that only failed on the JSON type ({"type": "null"} beside an object...).
    typed = [b for b in chosen if not all(_is_type_mismatch(e) for e in b)]
    chosen = typed or chosen
    leaves: list[ValidationError] = []
    for branch in chosen:
        for sub in branch:
            leaves.extend(_relevant_leaves(sub))
    return leaves


def _to_field_errors(errors: list[ValidationError]) -> list[FieldError]:
    out: list[FieldError] = []
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for top in errors:
        leaves = _relevant_leaves(top)
        if not leaves:
            leaves = [top]
        for leaf in leaves:
            path = tuple(leaf.absolute_path)
            code, message = _discord_code(leaf)
            if leaf.validator == "required":
                # jsonschema reports "'x' is a required property" at the parent.
                missing = leaf.message.split("'")[1] if "'" in leaf.message else ""
                path = (*path, missing) if missing else path
            key = (path, message)
            if key in seen:
                continue
            seen.add(key)
            out.append(FieldError(path=path, code=code, message=message))
    if not out and errors:
        best = best_match(errors)
        if best is not None:
            code, message = _discord_code(best)
            out.append(FieldError(path=tuple(best.absolute_path), code=code, message=message))
    return out


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


class OpenAPISpec:
    """Discord's OpenAPI document, with validators for request and response bodies."""

    def __init__(self, document: dict[str, Any], source: Path | None = None) -> None:
        self.source = source
        self.document = document
        self._patch_leniencies()
        resource = DRAFT202012.create_resource(self.document)
        self._registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    @classmethod
    def load(cls, path: Path | None = None) -> OpenAPISpec:
        path = path or spec_path()
        return _load_cached(str(path))

    def _patch_leniencies(self) -> None:
        schemas = self.document.get("components", {}).get("schemas", {})
        snowflake = schemas.get("SnowflakeType")
        if snowflake is not None:
            schemas["SnowflakeType"] = {
                "oneOf": [snowflake, {"type": "integer", "minimum": 0}],
            }

    @property
    def paths(self) -> dict[str, Any]:
        return self.document["paths"]

    def operation(self, method: str, template: str) -> dict[str, Any] | None:
        item = self.paths.get(template)
        if item is None:
            return None
        return item.get(method.lower())

    def has_operation(self, method: str, template: str) -> bool:
        return self.operation(method, template) is not None

    def _validator(self, pointer: str) -> Draft202012Validator:
        validator = self._validators.get(pointer)
        if validator is None:
            validator = Draft202012Validator(
                {"$ref": f"{_SPEC_URI}#{pointer}"}, registry=self._registry
            )
            self._validators[pointer] = validator
        return validator

    def request_schema_pointer(
        self, method: str, template: str, content_type: str = "application/json"
    ) -> str | None:
        op = self.operation(method, template)
        if op is None:
            return None
        content = op.get("requestBody", {}).get("content", {})
        if content_type not in content:
            return None
        return (
            f"/paths/{_pointer_escape(template)}/{method.lower()}/requestBody/content/"
            f"{_pointer_escape(content_type)}/schema"
        )

    def request_body_required(self, method: str, template: str) -> bool:
        op = self.operation(method, template) or {}
        body = op.get("requestBody")
        return bool(body and body.get("required"))

    def accepts_body(self, method: str, template: str) -> bool:
        op = self.operation(method, template) or {}
        return "requestBody" in op

    def validate_request(self, method: str, template: str, body: Any) -> ValidationResult:
        """Validate a JSON body (or a multipart ``payload_json``) for an operation."""
        pointer = self.request_schema_pointer(method, template)
        if pointer is None:
            if body is None:
                return ValidationResult()
            return ValidationResult(
                [FieldError((), "NO_BODY_EXPECTED", f"{method} {template} takes no JSON body")]
            )
        errors = list(self._validator(pointer).iter_errors(body))
        return ValidationResult(_to_field_errors(errors))

    def validate_response(
        self, method: str, template: str, status: int, body: Any
    ) -> ValidationResult:
        """Check one of our own answers against the spec (a self-test of the fake)."""
        op = self.operation(method, template)
        if op is None:
            return ValidationResult([FieldError((), "UNKNOWN", "operation not in spec")])
        responses = op.get("responses", {})
        key = str(status)
        if key not in responses:
            return ValidationResult()
        response = responses[key]
        if "$ref" in response:
            return ValidationResult()
        if "application/json" not in response.get("content", {}):
            return ValidationResult()
        pointer = (
            f"/paths/{_pointer_escape(template)}/{method.lower()}/responses/{key}/content/"
            "application~1json/schema"
        )
        errors = list(self._validator(pointer).iter_errors(body))
        return ValidationResult(_to_field_errors(errors))


@lru_cache(maxsize=4)
def _load_cached(path: str) -> OpenAPISpec:
    with open(path, encoding="utf-8") as fh:
        document = json.load(fh)
    return OpenAPISpec(copy.deepcopy(document), Path(path))


def load_spec_or_none() -> tuple[OpenAPISpec | None, str | None]:
    """The spec and ``None``, or ``None`` and the reason it is unavailable."""
    reason = spec_unavailable_reason()
    if reason is not None:
        return None, reason
    try:
        return OpenAPISpec.load(), None
    except (OSError, ValueError) as exc:
        return None, f"Discord OpenAPI spec at {spec_path()} could not be loaded: {exc}"
