"""Custom models in the core: restored at start-up from the database, refused with reasons,
removed with their file. Hub models are checked against what the hub says (stood in for here:
the hub is unreachable from the tests); links are covered end to end in
tests/test_custom_models_e2e.py."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from e2e_support import local_server
from huggingface_hub.hf_api import RepoSibling
from safetensors.numpy import save_file

from core import custom_models as custom_module
from core.custom_models import CustomModelRefused, CustomModels
from core.downloads import DownloadTooLarge, allowed_hosts
from core.errors import UserError
from core.storage import Database
from core.storage.custom_models import NewCustomModel
from engine.registry import ModelRegistry, SourceKind
from engine.types import Family

REGISTRY = """
default = "tiny"
[models.tiny]
source = "builtin:tiny"
[models.folder]
source = "/nowhere/sd15-folder"
family = "sd15"
"""


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database.open(tmp_path / "db.sqlite3") as database:
        yield database


def custom_models(db: Database, tmp_path: Path, max_bytes: int = 2**20) -> CustomModels:
    return CustomModels(
        db, ModelRegistry.loads(REGISTRY), models_dir=tmp_path / "models", max_bytes=max_bytes
    )


def write_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"cond_stage_model.transformer.x": np.zeros((2,), np.float32)}, str(path))
    return path


@pytest.mark.asyncio
async def test_recorded_models_are_offered_again_unless_their_file_or_name_is_gone(
    db: Database, tmp_path: Path
) -> None:
    kept = write_checkpoint(tmp_path / "models" / "kept-0123.safetensors")
    for name, file in (("kept", kept), ("lost", tmp_path / "models" / "lost.safetensors")):
        await db.custom_models.add(
            NewCustomModel(
                name=name,
                source=f"https://models.example/{name}.safetensors",
                kind="single_file",
                family="sd15",
                added_by=1,
                config="/nowhere/sd15-folder",
                file_path=str(file),
                sha256="0" * 64,
                size_bytes=10,
            )
        )
    await db.custom_models.add(  # the TOML file has a "folder" model now: it wins
        NewCustomModel(name="folder", source="org/x", kind="hub", family="sd15", added_by=1)
    )
    await db.custom_models.add(
        NewCustomModel(name="from-hub", source="org/xl", kind="hub", family="sdxl", added_by=1)
    )
    models = custom_models(db, tmp_path)
    assert await models.restore() == ["kept", "from-hub"]
    registry = models.registry
    assert registry.names() == ["tiny", "folder", "kept", "from-hub"]
    assert registry.get("kept").source == str(kept)
    assert registry.get("kept").config == "/nowhere/sd15-folder"
    assert registry.get("kept").description == "Added from models.example"
    assert registry.get("from-hub").source_kind is SourceKind.HUB
    assert registry.get("from-hub").family is Family.SDXL
    assert registry.get("folder").source == "/nowhere/sd15-folder"  # the TOML file's

    await models.remove("kept")
    assert not kept.exists() and "kept" not in registry
    assert await db.custom_models.get("kept") is None
    with pytest.raises(CustomModelRefused, match="not a model added with"):
        await models.remove("folder")
    with pytest.raises(CustomModelRefused, match="no model called"):
        await models.remove("kept")


@pytest.mark.asyncio
async def test_names_sources_and_configs_are_checked_before_anything_is_fetched(
    db: Database, tmp_path: Path
) -> None:
    models = custom_models(db, tmp_path)
    refused = {
        ("bad name!", "org/x", None): "A model name is 1 to 40",
        ("tiny", "org/x", None): "already a model called `tiny`",
        ("new", "not a source", None): "neither a Hugging Face hub id",
        ("new", "https://x.example/m.safetensors", "tiny"): "no configuration files to lend",
        ("new", "https://x.example/m.safetensors", "no such thing"): "neither a model of",
        ("new", "https://x.example/model.CKPT", None): "pickled checkpoint",
        ("new", "https://x.example/weights%2Ebin", None): "pickled checkpoint",
        ("new", "https://10.0.0.1/m.safetensors", None): "private or local address",
    }
    for (name, source, config), reason in refused.items():
        with pytest.raises(UserError, match=reason):
            await models.add(name, source, added_by=1, config=config)
    assert models.registry.custom_names() == []
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


class FakeHub:
    """What huggingface_hub answers about one repository."""

    def __init__(self, files: dict[str, int]) -> None:
        self.files = files
        self.downloaded: list[str] = []

    def model_info(self, repo_id: str, **kwargs: Any) -> Any:
        siblings = [RepoSibling(rfilename=name, size=size) for name, size in self.files.items()]
        return SimpleNamespace(siblings=siblings)

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs: Any) -> str:
        self.downloaded.append(filename)
        return "/cache/model_index.json"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import huggingface_hub

    fake = FakeHub({})
    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda _api, repo, **kw: fake.model_info(repo, **kw)
    )
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(custom_module, "detect_family", lambda source, kind: Family.SDXL)
    return fake


@pytest.mark.asyncio
async def test_a_hub_model_is_checked_recorded_and_offered(
    db: Database, tmp_path: Path, hub: FakeHub
) -> None:
    models = custom_models(db, tmp_path, max_bytes=1000)
    hub.files = {"README.md": 5, "unet/diffusion_pytorch_model.bin": 10}
    with pytest.raises(CustomModelRefused, match="not a diffusers pipeline"):
        await models.add("xl", "org/xl", added_by=3)
    hub.files["model_index.json"] = 1
    with pytest.raises(CustomModelRefused, match=r"no \.safetensors weights"):
        await models.add("xl", "org/xl", added_by=3)
    hub.files["unet/diffusion_pytorch_model.safetensors"] = 900
    hub.files["unet/diffusion_pytorch_model.fp16.safetensors"] = 450  # not counted twice
    hub.files["vae/diffusion_pytorch_model.safetensors"] = 200
    with pytest.raises(DownloadTooLarge, match="larger"):
        await models.add("xl", "org/xl", added_by=3)
    del hub.files["vae/diffusion_pytorch_model.safetensors"]
    added = await models.add("xl", "org/xl", added_by=3)
    assert hub.downloaded == ["model_index.json"]
    assert added.spec.source == "org/xl" and added.spec.source_kind is SourceKind.HUB
    assert added.spec.family is Family.SDXL and added.short_sha256 is None
    assert added.record.kind == "hub" and added.record.size_bytes == 900
    assert models.registry.get("xl") is added.spec
    assert (await db.custom_models.get("xl")) == added.record


@pytest.mark.asyncio
async def test_a_file_is_kept_under_an_absolute_path_and_refused_when_the_disk_is_full(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = write_checkpoint(tmp_path / "served" / "m.safetensors").read_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body)

    monkeypatch.chdir(tmp_path)
    async with local_server({"/m.safetensors": serve}) as origin:
        models = CustomModels(
            db,
            ModelRegistry.loads(REGISTRY),
            models_dir=Path("data") / "models",  # relative, as DATA_DIR's default is
            test_hosts=allowed_hosts([origin.removeprefix("http://")]),
        )
        assert models.models_dir == tmp_path / "data" / "models"
        real_disk_usage = shutil.disk_usage
        with monkeypatch.context() as full_disk:
            full_disk.setattr(
                custom_module.shutil, "disk_usage", lambda p: real_disk_usage(p)._replace(free=0)
            )
            with pytest.raises(CustomModelRefused, match="not enough free disk space"):
                await models.add("full", f"{origin}/m.safetensors", added_by=1)
        assert list(models.models_dir.iterdir()) == []
        added = await models.add("fits", f"{origin}/m.safetensors?token=secret#x", added_by=1)
    kept = Path(added.spec.source)
    assert kept.is_absolute() and await asyncio.to_thread(kept.read_bytes) == body
    assert added.record.sha256 == hashlib.sha256(body).hexdigest()
    assert added.record.size_bytes == len(body) and added.spec.family is Family.SD15
    assert added.record.source == f"{origin}/m.safetensors"  # no token kept
