"""The AUTOMATIC1111 emphasis syntax and prompts beyond 77 tokens, on both tiny layouts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.backend import DiffusersBackend
from engine.errors import ValidationError
from engine.ops.prompt_embeds import encoder_for, prompt_arguments
from engine.prompt_syntax import (
    EMPHASIS,
    MAX_CHUNKS,
    chunk_count,
    parse,
    plain_text,
    uses_syntax,
)
from engine.tiny import build_tiny_by_name
from engine.types import GenerationRequest, ResolvedRequest
from tests.engine.conftest import TINY_MODELS
from tests.engine.helpers import max_pixel_difference, never_cancel

BATCH_TOLERANCE = 2  # 8-bit levels: float noise between batch shapes
WINDOW = 75  # the tiny tokenizer spends one token per byte, as many as CLIP's window


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a red fox", [[("a red fox", 1.0)]]),
        ("(fox:1.3) in snow", [[("fox", 1.3), (" in snow", 1.0)]]),
        ("((fox))", [[("fox", pytest.approx(EMPHASIS**2))]]),
        ("[fox]", [[("fox", pytest.approx(1 / EMPHASIS))]]),
        ("(a (b:2) c)", [[("a ", 1.1), ("b", pytest.approx(2.2)), (" c", 1.1)]]),
        (r"a \(literal\) \[x\]", [[("a (literal) [x]", 1.0)]]),
        ("fox BREAK owl", [[("fox", 1.0)], [("owl", 1.0)]]),
        ("(left open", [[("left open", 1.1)]]),
        ("closed) only]", [[("closed) only]", 1.0)]]),
        ("time: 5:30", [[("time: 5:30", 1.0)]]),
        ("(fox:1e9)", [[("fox:1e9", 1.1)]]),  # not a number the syntax knows: text
        ("(fox:999)", [[("fox", 100.0)]]),  # a typo, bounded
        ("", [[("", 1.0)]]),
    ],
)
def test_the_web_ui_syntax_reads_as_it_does_there(text: str, parts: object) -> None:
    assert parse(text) == parts


def test_plain_text_and_syntax_detection() -> None:
    assert plain_text("((big)) [small] (dog:1.4)") == "big small dog"
    assert plain_text("fox BREAK owl") == "fox owl"
    assert not uses_syntax("a fox: red, quick") and not uses_syntax("")
    assert uses_syntax("(fox)") and uses_syntax(r"\(fox\)") and uses_syntax("a BREAK b")


@pytest.fixture(scope="module", params=TINY_MODELS)
def pipe(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return build_tiny_by_name(request.param)


def pipeline_encoding(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out = pipe.encode_prompt(
            prompt, device=torch.device("cpu"), num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt="",
        )  # fmt: skip
    return out[0][0], (out[2][0] if len(out) == 4 else None)


def test_a_plain_prompt_encodes_exactly_as_the_pipeline_does(pipe) -> None:  # type: ignore[no-untyped-def]
    encoder = encoder_for(pipe)
    assert encoder is not None
    for prompt in ("a red fox in snow", ""):
        hidden, pooled = pipeline_encoding(pipe, prompt)
        ours = encoder.encode(prompt)
        assert torch.equal(ours.hidden, hidden)
        if pooled is not None:
            assert ours.pooled is not None and torch.equal(ours.pooled, pooled)


def test_weights_change_the_embedding_and_weight_one_does_not(pipe) -> None:  # type: ignore[no-untyped-def]
    encoder = encoder_for(pipe)
    assert encoder is not None
    plain = encoder.encode("a red fox").hidden
    assert torch.equal(encoder.encode("a red (fox:1)").hidden, plain)
    stronger = encoder.encode("a red (fox:1.5)").hidden
    weaker = encoder.encode("a red [fox]").hidden
    assert not torch.allclose(stronger, plain) and not torch.allclose(weaker, plain)

    # The rows of "fox" (after the start mark and "a red ") are scaled by the weight, and
    # every row by one common factor (the rescale to the original mean).
    def tokens(text: str) -> int:
        return len(pipe.tokenizer(text, add_special_tokens=False).input_ids)

    first = 1 + tokens("a red ")
    fox = torch.zeros(stronger.shape[0], dtype=torch.bool)
    fox[first : first + tokens("fox")] = True
    common = float(stronger[0, 0] / plain[0, 0])
    torch.testing.assert_close(stronger[~fox], plain[~fox] * common)
    torch.testing.assert_close(stronger[fox], plain[fox] * common * 1.5)


def test_a_long_prompt_is_read_to_its_end_in_chunks(pipe) -> None:  # type: ignore[no-untyped-def]
    encoder = encoder_for(pipe)
    assert encoder is not None
    base = "x" * 190  # 190 tokens: the pipeline alone would read 75 of them
    cat, dog = encoder.encode(base + " cat"), encoder.encode(base + " dog")
    assert cat.hidden.shape[0] == 3 * (WINDOW + 2)
    assert not torch.equal(cat.hidden, dog.hidden)  # the end of the prompt counts
    assert torch.equal(pipeline_encoding(pipe, base + " cat")[0], pipeline_encoding(pipe, base)[0])
    huge = encoder.encode("y" * 5000)
    assert huge.hidden.shape[0] == MAX_CHUNKS * (WINDOW + 2)
    assert encoder.encode("fox BREAK owl").hidden.shape[0] == 2 * (WINDOW + 2)


def test_a_batch_pads_every_prompt_to_one_length(pipe) -> None:  # type: ignore[no-untyped-def]
    plain = prompt_arguments(pipe, ["a fox", "an owl"], ["", "blurry"])
    assert plain == {"prompt": ["a fox", "an owl"], "negative_prompt": ["", "blurry"]}
    mixed = prompt_arguments(pipe, ["a fox", "z" * 100], ["(blurry:1.2)", ""])
    assert mixed["prompt_embeds"].shape[:2] == (2, 2 * (WINDOW + 2))
    assert mixed["negative_prompt_embeds"].shape == mixed["prompt_embeds"].shape
    assert ("pooled_prompt_embeds" in mixed) == (getattr(pipe, "text_encoder_2", None) is not None)


def resolve(backend: DiffusersBackend, **fields: object) -> ResolvedRequest:
    base = GenerationRequest(prompt="a red fox in snow", model="tiny", seed=42)
    return backend.resolve(dataclasses.replace(base, **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize("model", TINY_MODELS)
def test_weighted_and_long_prompts_make_their_own_images_without_changing_others(
    backend: DiffusersBackend, model: str
) -> None:
    plain = resolve(backend, model=model, prompt="a red fox in snow")
    weighted = resolve(backend, model=model, prompt="a red (fox:1.6) in snow")
    long = resolve(backend, model=model, prompt="a red fox in snow, " + "very " * 40 + "detailed")
    assert not long.prompt_truncated and long.prompt.endswith("detailed")

    def alone(request: ResolvedRequest) -> bytes:
        return backend.run(request, request.slots("j"), never_cancel)[0].image.tobytes()

    assert alone(weighted) != alone(plain)
    assert alone(long) != alone(resolve(backend, model=model, prompt=long.prompt[:WINDOW]))
    # Only prompts of one length share a call (more chunks to attend to changes an image);
    # batched with one that needs embeddings, a plain prompt's image stays its own.
    assert long.prompt_chunks > 1 and plain.prompt_chunks == weighted.prompt_chunks == 1
    assert long.batch_key != plain.batch_key == weighted.batch_key
    together = backend.run(plain, plain.slots("plain") + weighted.slots("w"), never_cancel)
    by_itself = backend.run(plain, plain.slots("plain"), never_cancel)
    assert max_pixel_difference(together[0].image, by_itself[0].image) <= BATCH_TOLERANCE
    assert "(fox:1.6)" in together[1].parameters  # the metadata keeps the prompt as written
    other_long = resolve(backend, model=model, prompt="(owl:1.2) " + "dark " * 40, seed=7)
    assert other_long.batch_key == long.batch_key
    pair = backend.run(long, long.slots("long") + other_long.slots("owl"), never_cancel)
    assert max_pixel_difference(pair[0].image, alone_image(backend, long)) <= BATCH_TOLERANCE


def alone_image(backend: DiffusersBackend, request: ResolvedRequest):  # type: ignore[no-untyped-def]
    return backend.run(request, request.slots("j"), never_cancel)[0].image


def test_chunk_counts_follow_the_encoder() -> None:
    def count(text: str) -> int:
        return len(text)

    assert chunk_count("", count, 75) == 1 and chunk_count("a" * 75, count, 75) == 1
    assert chunk_count("a" * 76, count, 75) == 2
    assert chunk_count("(a:1.2) BREAK b", count, 75) == 2
    assert chunk_count("x BREAK " * 10, count, 75) == MAX_CHUNKS


def test_prompts_beyond_the_chunks_are_cut_and_said_so(backend: DiffusersBackend) -> None:
    fits = resolve(backend, prompt="a" * (MAX_CHUNKS * WINDOW))
    assert not fits.prompt_truncated
    cut = resolve(backend, prompt="a" * 5000)
    assert cut.prompt_truncated and cut.prompt == "a" * (MAX_CHUNKS * WINDOW)


def test_each_image_may_have_its_own_prompt(backend: DiffusersBackend) -> None:
    both = resolve(backend, prompt="a {fox|owl}", prompts=("a fox", "an (owl:1.2)"), count=2)
    assert [slot.prompt for slot in both.slots("j")] == ["a fox", "an (owl:1.2)"]
    images = backend.run(both, both.slots("j"), never_cancel)
    assert images[1].parameters.startswith("an (owl:1.2)\n")
    alone = resolve(backend, prompt="a fox", seed=42)
    assert max_pixel_difference(images[0].image, alone_image(backend, alone)) <= BATCH_TOLERANCE
    with pytest.raises(ValidationError, match="one prompt per image"):
        resolve(backend, prompts=("a fox",), count=2)
    with pytest.raises(ValidationError, match="empty"):
        resolve(backend, prompts=("a fox", " \x00 "), count=2)
