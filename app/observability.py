"""Optional error tracking with Sentry (SENTRY_DSN): unexpected errors (the ones users are
shown a reference for) go to Sentry tagged with that reference. Prompts and secrets are
scrubbed from every event unless the operator opts in (SENTRY_SEND_PROMPTS)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from core.config import Settings

FILTERED = "[Filtered]"
SECRETS = (
    re.compile(r"[\w-]{23,28}\.[\w-]{6,7}\.[\w-]{27,}"),  # a Discord bot token
    re.compile(r"\bdc_[\w-]{20,}"),  # an API key of ours
    re.compile(r"(?i)\b(bearer|bot)\s+[\w.~+/=-]{16,}"),  # an Authorization header's value
    re.compile(r"(?i)(token|secret|password|dsn)=\S+"),
)
PROMPT_KEYS = {"prompt", "negative_prompt", "negative", "instruction", "request", "content"}
PROMPT_TEXT = re.compile(r"(?i)\b(prompt|negative)=(\"[^\"]*\"|'[^']*'|\S+)")
INCIDENT = re.compile(r"\(ref ([0-9a-f]{8})\)")


def scrubber(send_prompts: bool, literal_secrets: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Sentry's ``before_send``: tag the incident reference, then scrub secrets (always)
    and prompts (unless ``send_prompts``) from every string and mapping in the event."""
    literals = tuple(secret for secret in literal_secrets if secret)

    def clean(value: Any, key: str | None = None) -> Any:
        if isinstance(value, str):
            if not send_prompts and key in PROMPT_KEYS:
                return FILTERED
            for secret in literals:
                value = value.replace(secret, FILTERED)
            for pattern in SECRETS:
                value = pattern.sub(FILTERED, value)
            if not send_prompts:
                value = PROMPT_TEXT.sub(lambda m: f"{m[1]}={FILTERED}", value)
            return value
        if isinstance(value, dict):
            return {k: clean(v, str(k).lower()) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(item, key) for item in value]
        return value

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        message = (event.get("logentry") or {}).get("message") or ""
        params = (event.get("logentry") or {}).get("params") or []
        text = message % tuple(params) if params and "%" in message else message
        found = INCIDENT.search(text)
        incident = (event.get("extra") or {}).get("incident") or (found[1] if found else None)
        if incident:
            event.setdefault("tags", {})["incident"] = incident
        cleaned: dict[str, Any] = clean(event)
        if not send_prompts:
            cleaned.pop("breadcrumbs", None)  # log lines can quote prompts
        return cleaned

    return before_send


def start_error_tracking(settings: Settings) -> bool:
    """Send unexpected errors to Sentry when SENTRY_DSN is set; returns whether it is on."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        send_default_pii=False,
        include_local_variables=False,  # a frame's locals hold prompts and tokens
        max_request_body_size="never",
        traces_sample_rate=0.0,
        before_send=scrubber(settings.sentry_send_prompts, (settings.discord_token,)),
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
    )
    return True
