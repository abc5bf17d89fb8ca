"""Errors the engine raises. Every message is safe to show to the user who caused it."""

from __future__ import annotations


def N_(text: str) -> str:
    """Marks an English text as one a front door shows translated (gettext's convention):
    the text itself is the message id in the catalogs, so nothing changes here."""
    return text


class EngineError(Exception):
    """Base class: ``str(error)`` is a user-safe explanation with a hint where one helps.

    Given ``values``, the message is a template (``"Steps must be at most {most}."``) filled
    from them, so a front door can show the template's translation with the same values.
    """

    def __init__(self, message: str = "", /, **values: object) -> None:
        super().__init__(message.format(**values) if values else message)
        self.template = message
        self.values = values


class ValidationError(EngineError):
    """The request itself is wrong (sizes, ranges, prompt, input images)."""


class ModelNotFoundError(EngineError):
    """The model name is not in the registry, or its weights cannot be found."""


class UnsafeCheckpointError(EngineError):
    """A pickled checkpoint (.ckpt, .pt, .bin) was configured; loading it could run code."""


class ModelLoadError(EngineError):
    """The model exists in the registry but could not be loaded (download, files, memory)."""


class HubUnreachableError(ModelLoadError):
    """A model must be downloaded but the Hugging Face hub cannot be reached."""

    def __init__(self, message: str, *, repo_id: str, label: str, reason: str) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.label = label
        self.reason = reason


class QueueFullError(EngineError):
    """The global queue bound was reached."""


class TooManyJobsError(EngineError):
    """This user already has the maximum number of queued jobs."""


class OutOfMemory(EngineError):
    """The device ran out of memory for this pipeline call."""

    def __init__(self, message: str = N_("This request is too large for this GPU.")) -> None:
        super().__init__(message)


class Interrupted(Exception):
    """Every slot of a pipeline call was cancelled; the call stopped without decoding."""


class EngineStopped(EngineError):
    """The engine is shutting down and takes no new jobs."""
