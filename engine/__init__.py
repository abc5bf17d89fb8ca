"""The diffusion engine: models, pipelines, the fair batching queue and the GPU worker."""

import logging


def _drop_torchvision_fallback_notice(record: logging.LogRecord) -> bool:
    # transformers says, once per image processor, that it uses its PIL implementation
    # because torchvision is absent. That implementation is the one we ship with, so the
    # notice only worries operators.
    return "requires torchvision (not installed)" not in record.getMessage()


# Set on package import, before any submodule imports transformers.
logging.getLogger("transformers.utils.import_utils").addFilter(_drop_torchvision_fallback_notice)
