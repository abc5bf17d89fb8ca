"""The built-in tiny models: deterministic, offline, and shaped like the real families."""

from __future__ import annotations

import socket

import pytest
import torch

from engine.tiny import (
    END_TOKEN,
    START_TOKEN,
    TOKENIZER_MAX_LENGTH,
    build_tiny_by_name,
    build_tiny_sd15,
    build_tiny_sdxl,
    tiny_tokenizer,
)


def test_two_builds_have_identical_weights() -> None:
    first, second = build_tiny_sd15(), build_tiny_sd15()
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_building_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_sd15()
    assert torch.equal(torch.rand(3), expected)


def test_building_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the tiny models must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    build_tiny_sdxl()


def test_sdxl_layout_has_two_encoders_and_size_conditioning() -> None:
    pipe = build_tiny_sdxl()
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert pipe.vae_scale_factor == 8  # as the real models: 64 px images, 8x8 latents


def test_tokenizer_tokenizes_any_text_within_its_vocabulary() -> None:
    tokenizer = tiny_tokenizer()
    assert tokenizer.model_max_length == TOKENIZER_MAX_LENGTH
    for text in ["a red fox", "🦊 in ❄️", "שלום עולם", "null\x00byte", "e\u0301", "x" * 5000]:
        ids = tokenizer(text, truncation=True, max_length=TOKENIZER_MAX_LENGTH).input_ids
        assert ids[0] == tokenizer.convert_tokens_to_ids(START_TOKEN)
        assert ids[-1] == tokenizer.convert_tokens_to_ids(END_TOKEN)
        assert len(ids) <= TOKENIZER_MAX_LENGTH
        assert max(ids) < len(tokenizer)
        assert tokenizer.unk_token_id not in ids[1:-1]  # every byte has its own token


@pytest.mark.parametrize("name", ["tiny", "tiny-xl"])
def test_text_config_uses_the_tokenizer_special_tokens(name: str) -> None:
    pipe = build_tiny_by_name(name)
    config = pipe.text_encoder.config
    assert config.bos_token_id == pipe.tokenizer.bos_token_id
    assert config.eos_token_id == pipe.tokenizer.eos_token_id
    assert config.vocab_size == len(pipe.tokenizer)
    assert config.max_position_embeddings == TOKENIZER_MAX_LENGTH


def test_unknown_builtin_name_is_refused() -> None:
    with pytest.raises(ValueError, match="built-ins"):
        build_tiny_by_name("huge")
