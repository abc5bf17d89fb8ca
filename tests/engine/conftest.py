"""Engine fixtures: the tiny models are built and loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.backend import DiffusersBackend
from engine.loader import LoaderOptions, ModelManager
from engine.registry import ModelRegistry
from engine.tiny import build_tiny_by_name

TINY_MODELS = ("tiny", "tiny-xl")


@pytest.fixture(scope="session")
def registry() -> ModelRegistry:
    return ModelRegistry.load()


@pytest.fixture(scope="session")
def manager() -> ModelManager:
    # CPU even where a GPU exists, so results (and PNG bytes) are comparable everywhere.
    return ModelManager(LoaderOptions(device="cpu", local_files_only=True))


@pytest.fixture(scope="session")
def backend(registry: ModelRegistry, manager: ModelManager) -> DiffusersBackend:
    return DiffusersBackend(registry, manager)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny model written as a diffusers folder (save_pretrained)."""
    root = tmp_path_factory.mktemp("tiny-folders")
    folders = {}
    for name in TINY_MODELS:
        folder = root / name
        build_tiny_by_name(name).save_pretrained(folder)
        folders[name] = folder
    return folders
