"""The image check: how likely each generated image is to be sexual content (NSFW), from a
transformers image classifier, run on the engine's device right after each pipeline call,
for every image of the call at once.

The default model is Falconsai/nsfw_image_detection (a ViT, Apache-2.0; labels "normal" and
"nsfw"). Any image classifier whose labels name the unsafe classes works: an image's score
is the summed probability of the labels in ``UNSAFE_LABELS``. What to do with a score (post,
blur, hold back) is the core's policy, not the engine's.

The model loads in the background when the engine starts. Should it fail to load (no
network, a wrong ``NSFW_MODEL``), images are passed unchecked and scored ``None``, the
failure is logged, and the load is tried again after ``RETRY_AFTER_S``: a bot must not stop
drawing because its check is missing, and an operator sees why in the log and the doctor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from engine.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_NSFW_MODEL = "Falconsai/nsfw_image_detection"  # Apache-2.0
UNSAFE_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "explicit", "unsafe"})
RETRY_AFTER_S = 600.0
BATCH_IMAGES = 16  # images per classifier call: a ViT-base at 224 px needs little memory


class ImageCheck(Protocol):
    def scores(self, images: Sequence[Image.Image]) -> list[float | None]:
        """One score in 0..1 per image (None: not checked). Blocks; call off the loop."""
        ...


class NsfwClassifier:
    """A transformers image classifier, loaded once in the background and kept."""

    def __init__(
        self,
        source: str = DEFAULT_NSFW_MODEL,
        *,
        device: str | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.source = source
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._clock = clock
        self._lock = threading.Lock()
        self._loading: Future[tuple[Any, Any, list[int]]] | None = None
        self._failed_at: float | None = None
        self.error: str | None = None  # why the last load failed, for the doctor and logs

    def start_loading(self) -> None:
        """Begin loading in a thread of its own (the engine's start does not wait for it)."""
        with self._lock:
            if self._loading is None:
                self._loading = Future()
                threading.Thread(
                    target=self._load_into, args=(self._loading,), name="nsfw-load", daemon=True
                ).start()

    def scores(self, images: Sequence[Image.Image]) -> list[float | None]:
        model = self._ready()
        if model is None:
            return [None] * len(images)
        network, processor, unsafe = model
        scores: list[float | None] = []
        for start in range(0, len(images), BATCH_IMAGES):
            chunk = [image.convert("RGB") for image in images[start : start + BATCH_IMAGES]]
            inputs = processor(images=chunk, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = network(**inputs).logits.float()
            probabilities = logits.softmax(dim=-1)[:, unsafe].sum(dim=-1)
            scores += [round(float(p), 4) for p in probabilities.clamp(0.0, 1.0).tolist()]
        return scores

    def _ready(self) -> tuple[Any, Any, list[int]] | None:
        """The loaded model, waiting for a load under way; None while it cannot load."""
        with self._lock:
            if self._loading is None or (
                self._failed_at is not None and self._clock() - self._failed_at >= RETRY_AFTER_S
            ):
                self._failed_at = None
                self._loading = Future()
                loading = self._loading
                start = True
            else:
                loading, start = self._loading, False
        if start:
            self._load_into(loading)
        try:
            return loading.result()
        except ModelLoadError:
            return None

    def _load_into(self, future: Future[tuple[Any, Any, list[int]]]) -> None:
        try:
            future.set_result(self._load())
        except ModelLoadError as error:
            with self._lock:
                self._failed_at = self._clock()
                self.error = str(error)
            log.error("the image check is off until it loads: %s", error)
            future.set_exception(error)
        except BaseException as error:  # a bug: reported like a failed load, never raised twice
            log.exception("the image check could not be loaded")
            with self._lock:
                self._failed_at = self._clock()
                self.error = f"{type(error).__name__}: {error}"
            future.set_exception(ModelLoadError(self.error))

    def _load(self) -> tuple[Any, Any, list[int]]:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        started = time.perf_counter()
        folder = Path(self.source).expanduser()
        if folder.is_absolute() or self.source.startswith((".", "~")):
            if not folder.is_dir():
                raise ModelLoadError(
                    f"NSFW_MODEL is the folder {self.source!r}, which does not exist. Set it to "
                    "a folder of a transformers image classifier, a hub id, or 'off'."
                )
        elif not _cached(self.source):
            # Fails in a fraction of a second without a network, where the download's own
            # retries would take half a minute.
            from engine.errors import HubUnreachableError
            from engine.loader import check_hub_reachable

            try:
                check_hub_reachable(self.source, "NSFW_MODEL")
            except HubUnreachableError as error:
                raise ModelLoadError(
                    f"The image check's model {self.source!r} is not downloaded and the "
                    f"Hugging Face hub cannot be reached ({error.reason}). Download it on a "
                    f"connected machine (`hf download {self.source}`) and copy the cache, set "
                    "NSFW_MODEL to a local folder, or set NSFW_MODEL=off."
                ) from None
        try:
            processor = AutoImageProcessor.from_pretrained(self.source)
            network = AutoModelForImageClassification.from_pretrained(
                self.source, use_safetensors=True
            )
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"The image check's model {self.source!r} could not be loaded "
                f"({str(error).splitlines()[0][:200]}). Set NSFW_MODEL to a hub id or a folder "
                "of a transformers image classifier (safetensors weights), or to 'off'."
            ) from None
        labels: dict[int, str] = network.config.id2label
        unsafe = sorted(i for i, name in labels.items() if name.strip().lower() in UNSAFE_LABELS)
        if not unsafe:
            raise ModelLoadError(
                f"The image check's model {self.source!r} has no unsafe label (its labels: "
                f"{', '.join(sorted(labels.values()))}); it needs one of "
                f"{', '.join(sorted(UNSAFE_LABELS))}."
            )
        network = network.to(self.device).eval()
        log.info(
            "image check %s loaded in %.1fs on %s",
            self.source,
            time.perf_counter() - started,
            self.device,
        )
        with self._lock:
            self.error = None
        return network, processor, unsafe


def _cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed id or a cache oddity: not cached
        return False
