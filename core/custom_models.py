"""Models the bot's owners add at run time: a Hugging Face hub id, or an https link to a
``.safetensors`` file that is downloaded here.

The registry the engine and every front door share is the TOML file's models plus the rows
of the ``custom_models`` table; ``restore`` adds those rows at start-up and ``add`` adds one
while the bot runs, so a new model is offered at once, without a restart. Who may add one is
the front door's decision (the bot's owners, ``OWNER_IDS``).

A link is fetched under the same guard as a user's image link (``core.downloads``): https
only, public addresses only (after DNS resolution, and again on every redirect), a byte cap
while the file streams. Pickled checkpoints are refused by their name and, whatever they are
called, by their content: the file must be a whole ``.safetensors`` file before it is kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from yarl import URL

from core.downloads import (
    AllowedHost,
    DownloadRefused,
    DownloadTooLarge,
    ProgressCallback,
    download_link_to_file,
    human_size,
)
from core.errors import N_, UserError
from core.storage.custom_models import CustomModel, NewCustomModel
from core.storage.database import Database
from engine.registry import (
    PICKLED_SUFFIXES,
    ModelRegistry,
    ModelSpec,
    RegistryError,
    SourceKind,
    check_safetensors,
    custom_model_spec,
    detect_family,
    family_of_keys,
    is_hub_id,
    is_valid_model_name,
)
from engine.types import Family

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 2**30  # an SDXL checkpoint in fp16 is about 7 GB
HUB_TIMEOUT_S = 15.0
FREE_SPACE_MARGIN = 2**30  # left free on the disk after a download, for the database and images
# Weight files of a diffusers repository in another precision or kind: not counted twice
# when the size of a hub model is estimated.
_VARIANT_MARKERS = (".fp16.", ".bf16.", ".fp32.", ".ema.", ".non_ema.")


class CustomModelRefused(UserError):
    """The model cannot be added (or removed) as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class AddedModel:
    record: CustomModel
    spec: ModelSpec

    @property
    def short_sha256(self) -> str | None:
        return self.record.sha256[:12] if self.record.sha256 else None


@dataclass(frozen=True, slots=True)
class _HubFacts:
    family: Family
    size_bytes: int


class CustomModels:
    """Adds, removes and restores the custom models of ``registry``, recorded in ``db``.

    ``models_dir``: where downloaded files are kept. ``max_bytes``: the largest file (or hub
    model) accepted. ``test_hosts``: host:port pairs a link may use although they are local
    (``LINK_TEST_HOSTS``, for tests only).
    """

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        *,
        models_dir: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        test_hosts: Iterable[AllowedHost] = (),
    ) -> None:
        self.db = db
        self.registry = registry
        # Absolute: the registry takes a relative path from its own folder, not from here.
        self.models_dir = models_dir.expanduser().absolute()
        self.max_bytes = max_bytes
        self.test_hosts = tuple(test_hosts)
        self._adding: set[str] = set()

    # --- start-up -----------------------------------------------------------------------

    async def restore(self) -> list[str]:
        """Offer the recorded custom models again; returns their names. A model whose file
        is gone, or whose name the TOML file now uses, is left out with a warning."""
        restored = []
        for record in await self.db.custom_models.all():
            if record.name in self.registry:
                log.warning(
                    "custom model %s is not offered: the registry file has a model of that "
                    "name now (remove one of them)",
                    record.name,
                )
                continue
            if record.file_path is not None and not await asyncio.to_thread(
                Path(record.file_path).is_file
            ):
                log.warning(
                    "custom model %s is not offered: its file %s is gone (add it again, or "
                    "remove it with /model remove)",
                    record.name,
                    record.file_path,
                )
                continue
            try:
                self.registry.add(_spec_of(record))
            except RegistryError as error:
                log.warning("custom model %s is not offered: %s", record.name, error)
                continue
            restored.append(record.name)
        return restored

    # --- adding -------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        source: str,
        *,
        added_by: int,
        config: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> AddedModel:
        """Add ``source`` (a hub id, or an https link to a .safetensors file) as ``name``.
        ``config``: a model of the registry (or a hub id) whose configs a single file
        shares; None lets diffusers choose them by the file's family (from the hub).
        Raises a UserError subclass that says what is wrong."""
        name = name.strip()
        source = source.strip()
        self._check_name(name)
        config_source, config_family = self._config_source(config)
        self._adding.add(name)
        try:
            if source.lower().startswith(("https://", "http://")):
                return await self._add_file(
                    name, source, added_by, config_source, config_family, on_progress
                )
            if is_hub_id(source):
                return await self._add_hub(name, source, added_by)
            raise CustomModelRefused(
                N_(
                    "`{source}` is neither a Hugging Face hub id (`owner/name`) nor an https "
                    "link to a .safetensors file."
                ),
                source=_clip(source),
            )
        finally:
            self._adding.discard(name)

    def _check_name(self, name: str) -> None:
        if not is_valid_model_name(name):
            raise CustomModelRefused(
                N_(
                    "A model name is 1 to 40 letters, digits, `.`, `_` or `-`, starting with a "
                    "letter or digit."
                )
            )
        if name in self.registry or name in self._adding:
            raise CustomModelRefused(
                N_("There is already a model called `{name}`: choose another name."), name=name
            )

    def _config_source(self, config: str | None) -> tuple[str | None, Family | None]:
        """Where a single file's configs come from, and the family they are for (when a
        model of the registry lends them)."""
        if config is None or not config.strip():
            return None, None
        config = config.strip()
        if config in self.registry:
            spec = self.registry.get(config)
            if spec.source_kind in (SourceKind.FOLDER, SourceKind.HUB):
                return spec.source, spec.family
            if spec.config is not None:
                return spec.config, spec.family
            raise CustomModelRefused(
                N_(
                    "`{name}` has no configuration files to lend (it is built in or a single "
                    "file itself): name another model, or a hub id."
                ),
                name=config,
            )
        if is_hub_id(config):
            return config, None
        raise CustomModelRefused(
            N_("`{config}` is neither a model of the bot's nor a hub id (`owner/name`)."),
            config=_clip(config),
        )

    async def _add_file(
        self,
        name: str,
        url: str,
        added_by: int,
        config: str | None,
        config_family: Family | None,
        on_progress: ProgressCallback | None,
    ) -> AddedModel:
        try:
            link = URL(url)
        except ValueError:
            raise DownloadRefused(N_("That link is not a valid web address.")) from None
        path = unquote(link.path).lower()
        # What is recorded and logged: download links often carry an access token in their
        # query (?token=...), which must not end up in the database or the logs.
        shown_url = str(link.with_query(None).with_fragment(None))
        if path.endswith(PICKLED_SUFFIXES):
            raise CustomModelRefused(_PICKLED)
        partial = self.models_dir / f".{name}.{secrets.token_hex(4)}.part"
        checked_space = False

        async def progress(done: int, total: int | None) -> None:
            # Once the size is announced: refuse a file the disk cannot hold now, rather
            # than fail with a full disk gigabytes later.
            nonlocal checked_space
            if not checked_space and total is not None:
                checked_space = True
                free = (await asyncio.to_thread(shutil.disk_usage, self.models_dir)).free
                if total - done > free - FREE_SPACE_MARGIN:
                    raise CustomModelRefused(
                        N_("There is not enough free disk space here for that file ({size})."),
                        size=human_size(total),
                    )
            if on_progress is not None:
                await on_progress(done, total)

        downloaded = await download_link_to_file(
            url,
            partial,
            max_bytes=self.max_bytes,
            allowed=self.test_hosts,
            on_progress=progress,
        )
        kept: Path | None = None
        try:
            try:
                # The header of a file of gigabytes: read in a thread.
                keys = await asyncio.to_thread(check_safetensors, partial)
            except ValueError as error:
                log.info(
                    "custom model %s refused: %s is not .safetensors: %s", name, shown_url, error
                )
                raise CustomModelRefused(
                    N_(
                        "That file is not a .safetensors file (or it is incomplete). Pickled "
                        "checkpoints (.ckpt, .pt, .bin) are refused: loading one can run any code."
                    )
                ) from None
            family = family_of_keys(keys)
            if config_family is not None and config_family is not family:
                raise CustomModelRefused(
                    N_(
                        "That file is a {family} model, but the configuration comes from a "
                        "{other} one: name a model of the same family."
                    ),
                    family=family.value,
                    other=config_family.value,
                )
            kept = self.models_dir / f"{name}-{downloaded.sha256[:12]}.safetensors"
            await asyncio.to_thread(os.replace, partial, kept)
            spec = custom_model_spec(
                name, str(kept), family=family, config=config, description=_described(url)
            )
            record = await self._record(
                NewCustomModel(
                    name=name,
                    source=shown_url,
                    kind="single_file",
                    family=family.value,
                    added_by=added_by,
                    config=config,
                    file_path=str(kept),
                    sha256=downloaded.sha256,
                    size_bytes=downloaded.size_bytes,
                ),
                spec,
            )
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_delete, partial, kept))
            raise
        log.info(
            "custom model %s added from %s by %s (%s, sha256 %s)",
            name,
            shown_url,
            added_by,
            human_size(downloaded.size_bytes),
            downloaded.sha256,
        )
        return AddedModel(record, spec)

    async def _add_hub(self, name: str, repo_id: str, added_by: int) -> AddedModel:
        facts = await asyncio.to_thread(_describe_hub_model, repo_id, self.max_bytes)
        spec = custom_model_spec(
            name, repo_id, family=facts.family, description=f"{repo_id} (Hugging Face hub)"
        )
        record = await self._record(
            NewCustomModel(
                name=name,
                source=repo_id,
                kind="hub",
                family=facts.family.value,
                added_by=added_by,
                size_bytes=facts.size_bytes,
            ),
            spec,
        )
        log.info("custom model %s added from the hub's %s by %s", name, repo_id, added_by)
        return AddedModel(record, spec)

    async def _record(self, model: NewCustomModel, spec: ModelSpec) -> CustomModel:
        """Write the row first (a model offered must survive a restart), then offer it."""
        if model.name in self.registry:  # the TOML file's, or one added meanwhile
            raise CustomModelRefused(
                N_("There is already a model called `{name}`: choose another name."),
                name=model.name,
            )
        record = await self.db.custom_models.add(model)
        self.registry.add(spec)
        return record

    # --- removing -----------------------------------------------------------------------

    async def remove(self, name: str) -> CustomModel:
        """Stop offering a custom model and delete its downloaded file. Its past results
        stay. The registry file's models cannot be removed here."""
        if not self.registry.is_custom(name):
            raise CustomModelRefused(
                N_(
                    "`{name}` is not a model added with `/model add`; the models of the "
                    "registry file can only be turned off per server (`/model disable`)."
                )
                if name in self.registry
                else N_("There is no model called `{name}`. Pick one from the list."),
                name=_clip(name),
            )
        record = await self.db.custom_models.remove(name)
        self.registry.remove(name)
        if record is not None and record.file_path is not None:
            path = Path(record.file_path)
            if path.parent == self.models_dir:  # never a file this class did not download
                await asyncio.to_thread(_delete, path, None)
        log.info("custom model %s removed", name)
        assert record is not None
        return record


_PICKLED = N_(
    "That is a pickled checkpoint (.ckpt, .pt, .pth, .bin): loading one can run any code, so "
    "it is refused. Use the model's .safetensors file."
)


def _spec_of(record: CustomModel) -> ModelSpec:
    source = record.file_path or record.source
    description = (
        f"{record.source} (Hugging Face hub)" if record.kind == "hub" else _described(record.source)
    )
    return custom_model_spec(
        record.name,
        source,
        family=Family(record.family),
        config=record.config,
        description=description,
    )


def _described(url: str) -> str:
    try:
        host = URL(url).host or url
    except ValueError:
        host = url
    return f"Added from {host}"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _delete(partial: Path, kept: Path | None) -> None:
    partial.unlink(missing_ok=True)
    if kept is not None:
        kept.unlink(missing_ok=True)


def _describe_hub_model(repo_id: str, max_bytes: int) -> _HubFacts:
    """What the hub says of ``repo_id`` (run in a thread): a diffusers pipeline with
    .safetensors weights, its family and the size of its weights. Only its small
    model_index.json is downloaded here; the weights come on first use, as for the hub
    models of the registry file."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        info = HfApi().model_info(repo_id, files_metadata=True, timeout=HUB_TIMEOUT_S)
        files = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or ()}
        if "model_index.json" not in files:
            raise CustomModelRefused(
                N_(
                    "`{repo}` on the Hugging Face hub is not a diffusers pipeline (it has no "
                    "model_index.json)."
                ),
                repo=repo_id,
            )
        weights = {
            file: size
            for file, size in files.items()
            if "/" in file
            and file.endswith(".safetensors")
            and not any(marker in file for marker in _VARIANT_MARKERS)
        }
        if not weights:
            raise CustomModelRefused(
                N_(
                    "`{repo}` on the Hugging Face hub has no .safetensors weights; pickled "
                    "weights (.bin, .ckpt) are refused: loading them can run any code."
                ),
                repo=repo_id,
            )
        size = sum(weights.values())
        if size > max_bytes:
            raise DownloadTooLarge(
                N_("`{repo}` is larger ({size}) than the limit of {limit}."),
                repo=repo_id,
                size=human_size(size),
                limit=human_size(max_bytes),
            )
        hf_hub_download(repo_id, "model_index.json", etag_timeout=HUB_TIMEOUT_S)
    except (GatedRepoError, RepositoryNotFoundError):
        raise CustomModelRefused(
            N_(
                "The Hugging Face hub has no public model `{repo}` (or it is gated: accept its "
                "licence and give the bot a token first)."
            ),
            repo=repo_id,
        ) from None
    except OfflineModeIsEnabled:
        raise CustomModelRefused(_HUB_UNREACHABLE, repo=repo_id) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise CustomModelRefused(
            N_("The Hugging Face hub answered {status} about `{repo}`; try again later."),
            status=status,
            repo=repo_id,
        ) from None
    except UserError:
        raise
    except Exception as error:  # the hub's transport errors have no common base outside it
        log.warning("the hub could not be reached about %s: %s", repo_id, error)
        raise CustomModelRefused(_HUB_UNREACHABLE, repo=repo_id) from None
    family = detect_family(repo_id, SourceKind.HUB)  # from the model_index.json just cached
    return _HubFacts(family or Family.SD15, size)


_HUB_UNREACHABLE = N_(
    "I could not reach the Hugging Face hub to check `{repo}` (this machine may be offline). "
    "Try again later, or add the model from an https link to its .safetensors file."
)
