"""The image check: a real (tiny, random) transformers classifier scoring every image of each
pipeline call, its failures passing images unchecked, and its load retried."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from fake_backend import FakeBackend
from foreign_models import save_tiny_nsfw_classifier
from PIL import Image

from engine.engine import Engine, EngineSettings
from engine.safety import BATCH_IMAGES, RETRY_AFTER_S, NsfwClassifier
from engine.types import Done, GenerationRequest


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_nsfw_classifier(tmp_path_factory.mktemp("nsfw") / "tiny-nsfw")


def pictures(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (48 + 8 * i, 40), (40 * i % 256, 90, 200)) for i in range(count)]


def test_each_image_gets_a_score_the_same_in_any_batch(classifier_dir: Path) -> None:
    check = NsfwClassifier(str(classifier_dir), device="cpu")
    many = pictures(BATCH_IMAGES + 3)  # two classifier calls
    scores = check.scores(many)
    assert len(scores) == len(many)
    assert all(score is not None and 0.0 <= score <= 1.0 for score in scores)
    assert len(set(scores)) > 1  # different pictures, different scores
    alone = [check.scores([picture])[0] for picture in many[-3:]]
    assert alone == pytest.approx(scores[-3:], abs=1e-3)
    assert check.error is None


def test_a_model_without_an_unsafe_label_is_refused_clearly(tmp_path: Path) -> None:
    folder = save_tiny_nsfw_classifier(tmp_path / "pets", labels={0: "cat", 1: "dog"})
    check = NsfwClassifier(str(folder), device="cpu")
    assert check.scores(pictures(2)) == [None, None]
    assert check.error is not None
    assert "no unsafe label" in check.error and "cat, dog" in check.error


def test_a_failed_load_passes_images_unchecked_and_is_tried_again(
    classifier_dir: Path, tmp_path: Path
) -> None:
    now = [0.0]
    folder = tmp_path / "not-yet"
    check = NsfwClassifier(str(folder), device="cpu", clock=lambda: now[0])
    assert check.scores(pictures(1)) == [None]
    assert check.error is not None and "NSFW_MODEL" in check.error

    shutil.copytree(classifier_dir, folder)
    now[0] = RETRY_AFTER_S - 1
    assert check.scores(pictures(1)) == [None]  # not tried again yet
    now[0] = RETRY_AFTER_S + 1
    (score,) = check.scores(pictures(1))
    assert score is not None and check.error is None


@pytest.mark.asyncio
async def test_the_engine_scores_every_image_it_makes(classifier_dir: Path) -> None:
    check = NsfwClassifier(str(classifier_dir), device="cpu")
    engine = Engine(
        FakeBackend(step_seconds=0.001),
        EngineSettings(progress_interval_s=0.0),
        image_check=check,
    )
    await engine.start()
    try:
        handles = [
            await engine.submit(GenerationRequest(prompt=p, count=2, seed=3), user_id=p)
            for p in ("a fox", "a hen")
        ]
        async with asyncio.timeout(30):
            outcomes = [await handle.wait() for handle in handles]
    finally:
        await engine.stop()
    for outcome in outcomes:
        assert isinstance(outcome, Done)
        scores = [image.nsfw_score for image in outcome.result.images]
        expected = check.scores([image.image for image in outcome.result.images])
        assert scores == pytest.approx(expected, abs=1e-3)


@pytest.mark.asyncio
async def test_without_a_check_images_carry_no_score() -> None:
    engine = Engine(FakeBackend(step_seconds=0.001), EngineSettings(progress_interval_s=0.0))
    await engine.start()
    try:
        handle = await engine.submit(GenerationRequest(prompt="a fox"), user_id="u")
        async with asyncio.timeout(30):
            outcome = await handle.wait()
    finally:
        await engine.stop()
    assert isinstance(outcome, Done)
    assert [image.nsfw_score for image in outcome.result.images] == [None]
