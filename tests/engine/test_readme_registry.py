"""The registry example in the README is a registry the engine accepts."""

from __future__ import annotations

import re
from pathlib import Path

from engine.registry import ModelRegistry
from engine.types import Family

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_registry_example_loads() -> None:
    match = re.search(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no TOML registry example"
    registry = ModelRegistry.loads(
        match.group(1), base_dir=README.parent, default_name=None, origin="README.md"
    )
    assert registry.default_name == "sd-turbo"
    assert registry.get("sdxl").family is Family.SDXL
    assert registry.get("dreamy").source.endswith(".safetensors")
