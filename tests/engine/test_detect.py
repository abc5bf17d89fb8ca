"""Object detection (engine/detect.py): a tiny random YOLOS built offline through the real
transformers loading code, and a fake YOLO service over real HTTP on 127.0.0.1 (up, down,
slow, broken)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from api_support import free_port
from e2e_support import local_server
from foreign_models import DETECTION_LABELS, save_tiny_yolos
from PIL import Image

from engine.detect import (
    Detection,
    DetectionUnavailable,
    LocalDetector,
    RemoteDetector,
    annotate,
    count_labels,
    parse_detections,
)
from engine.errors import ModelLoadError

BACKGROUND = (20, 90, 160)


@pytest.fixture(scope="module")
def tiny_yolos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_yolos(tmp_path_factory.mktemp("yolos"))


def picture() -> Image.Image:
    """Known shapes: a white square and a black bar on blue."""
    image = Image.new("RGB", (120, 80), BACKGROUND)
    image.paste((255, 255, 255), (10, 10, 40, 40))
    image.paste((0, 0, 0), (60, 50, 110, 60))
    return image


def test_the_local_model_answers_boxes_inside_the_image(tiny_yolos: Path) -> None:
    detector = LocalDetector(str(tiny_yolos), device="cpu", local_files_only=True)
    image = picture()
    everything = detector.detect_now(image, threshold=0.0)
    assert 1 <= len(everything) <= 10  # one per detection token at most
    for found in everything:
        assert found.label in DETECTION_LABELS.values()
        x0, y0, x1, y1 = found.box
        assert 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height
        assert 0.0 <= found.score <= 1.0
    assert [d.score for d in everything] == sorted((d.score for d in everything), reverse=True)
    assert detector.detect_now(image, threshold=1.01) == []


def test_a_missing_local_model_says_which_setting_to_fix(tmp_path: Path) -> None:
    detector = LocalDetector(str(tmp_path / "nothing"), device="cpu", local_files_only=True)
    with pytest.raises(ModelLoadError, match="DETECTOR_MODEL"):
        detector.detect_now(picture(), 0.5)


def test_boxes_are_drawn_where_the_detections_say() -> None:
    image = picture()
    boxes = [Detection("dog", 0.9, (10, 10, 40, 40)), Detection("cat", 0.6, (60, 50, 110, 60))]
    drawn = annotate(image, boxes)
    assert drawn.size == image.size
    assert drawn.getpixel((25, 39)) != image.getpixel((25, 39))  # the square's lower edge
    assert drawn.getpixel((25, 25)) == image.getpixel((25, 25))  # its middle stays
    assert drawn.getpixel((115, 75)) == BACKGROUND  # away from every box
    assert drawn.getpixel((25, 39)) != drawn.getpixel((85, 59))  # a colour per label
    assert count_labels([*boxes, Detection("dog", 0.5, (0, 0, 5, 5))]) == [("dog", 2), ("cat", 1)]


def test_the_service_answer_is_checked_and_clipped() -> None:
    answer = {
        "detections": [
            {"label": "dog\x00\n", "score": 1.7, "box": [-5, 10, 200, 50]},
            {"label": "ghost", "score": 0.5, "box": [300, 300, 400, 400]},  # outside: dropped
        ]
    }
    [dog] = parse_detections(answer, 120, 80)
    assert dog == Detection("dog", 1.0, (0.0, 10.0, 120.0, 50.0))
    cases: tuple[object, ...] = (
        None,
        [],
        {"detections": "many"},
        {"detections": [{"label": "x", "score": float("nan"), "box": [0, 0, 1, 1]}]},
        {"detections": [{"label": "x", "score": True, "box": [0, 0, 1, 1]}]},
        {"detections": [{"label": 5, "score": 0.5, "box": [0, 0, 1, 1]}]},
        {"detections": [{"label": "x", "score": 0.5, "box": [0, 0, 1]}]},
    )
    for broken in cases:
        with pytest.raises(DetectionUnavailable, match="not a list of detections"):
            parse_detections(broken, 120, 80)


class FakeService:
    """A YOLO service: answers what ``mode`` says and counts the requests."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.thresholds: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        form = await request.post()
        self.thresholds.append(str(form["threshold"]))
        upload = form["image"]
        assert isinstance(upload, web.FileField)
        sent = Image.open(upload.file)
        if self.mode == "slow":
            await asyncio.sleep(2)
        if self.mode == "garbage":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if self.mode == "error-once":
            self.mode = "ok"
            return web.Response(status=503)
        box = [10, 10, 40, 40] if sent.size == (120, 80) else [0, 0, 1, 1]
        return web.json_response({"detections": [{"label": "dog", "score": 0.9, "box": box}]})


@pytest.mark.asyncio
async def test_a_remote_service_up_slow_broken_and_down() -> None:
    service = FakeService()
    async with local_server({"/detect": service.handle}, method="POST") as origin:
        detector = RemoteDetector(f"{origin}/detect", timeout_s=0.5, retries=1)
        image = picture()
        [dog] = await detector.detect(image, 0.4)
        assert dog == Detection("dog", 0.9, (10.0, 10.0, 40.0, 40.0))
        assert service.thresholds == ["0.4"]
        service.mode = "error-once"  # a 503 is retried
        assert len(await detector.detect(image, 0.4)) == 1
        service.mode = "slow"
        with pytest.raises(DetectionUnavailable, match=r"within 0\.5 s"):
            await detector.detect(image, 0.4)
        service.mode = "garbage"
        with pytest.raises(DetectionUnavailable, match="not a list of detections"):
            await detector.detect(image, 0.4)
    down = RemoteDetector(f"http://127.0.0.1:{free_port()}/detect", retries=0)
    with pytest.raises(DetectionUnavailable, match="cannot be reached"):
        await down.detect(picture(), 0.5)


@pytest.mark.asyncio
async def test_the_circuit_breaker_rests_a_failing_service() -> None:
    service = FakeService()
    service.mode = "garbage"
    now = [100.0]
    async with local_server({"/detect": service.handle}, method="POST") as origin:
        detector = RemoteDetector(
            f"{origin}/detect",
            retries=0,
            breaker_failures=2,
            breaker_open_s=30,
            clock=lambda: now[0],
        )
        for _ in range(2):
            with pytest.raises(DetectionUnavailable, match="not a list"):
                await detector.detect(picture(), 0.5)
        asked = service.requests
        with pytest.raises(DetectionUnavailable, match="rest for 30 s"):
            await detector.detect(picture(), 0.5)
        assert service.requests == asked  # not asked while resting
        now[0] += 31
        service.mode = "ok"
        assert len(await detector.detect(picture(), 0.5)) == 1
        assert service.requests == asked + 1
