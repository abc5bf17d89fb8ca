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


def test_the_lora_example_in_the_model_docs_loads() -> None:
    docs = (README.parent / "docs" / "models.md").read_text()
    section = docs[docs.index("## LoRAs") :]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "docs/models.md has no LoRA example"
    registry = ModelRegistry.loads(
        '[models.tiny]\nsource = "builtin:tiny"\n' + match.group(1),
        base_dir=README.parent,
        origin="docs/models.md",
    )
    ink = registry.lora("ink-lines")
    pixel = registry.lora("pixel-xl")
    assert ink is not None and ink.triggers == ("ink drawing",) and ink.source.startswith("/")
    assert pixel is not None and pixel.family is Family.SDXL and pixel.weight_name
