"""Object detection through the front doors: ``POST /api/cv/yolo/detect`` and /analyze, with
the product as its own process, a fake YOLO service over real HTTP (up, slow, down) and a
tiny random YOLOS model loaded from a folder."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from api_support import ApiProcess, auth, start_api
from e2e_support import World, is_result, job_by_message, local_server, reply_text, stand_in
from foreign_models import DETECTION_LABELS, save_tiny_yolos
from PIL import Image

pytestmark = pytest.mark.asyncio(loop_scope="module")
DETECT = "/api/cv/yolo/detect"
BACKGROUND = (20, 90, 160)


def picture_png() -> bytes:
    image = Image.new("RGB", (120, 80), BACKGROUND)
    image.paste((255, 255, 255), (10, 10, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Service:
    """A YOLO service: a dog where the white square is; slow, broken or down on demand."""

    def __init__(self) -> None:
        self.mode = "ok"

    async def handle(self, request: web.Request) -> web.Response:
        await request.post()
        if self.mode == "down":  # hangs up: what a crashed service behind a proxy looks like
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if self.mode == "slow":
            await asyncio.sleep(3)
        if self.mode == "broken":
            return web.Response(text="not json")
        return web.json_response(
            {"detections": [{"label": "dog", "score": 0.87, "box": [10, 10, 40, 40]}]}
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def service() -> AsyncIterator[tuple[Service, str]]:
    fake = Service()
    async with local_server({"/detect": fake.handle}, method="POST") as origin:
        yield fake, f"{origin}/detect"


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, api: ApiProcess, key: str | None, body: object
) -> tuple[int, dict[str, object], aiohttp.typedefs.LooseHeaders]:
    headers = auth(key) if key else {}
    async with http.post(f"{api.base}{DETECT}", json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_the_api_detects_through_a_service_and_explains_every_refusal(
    tmp_path: Path, http: aiohttp.ClientSession, service: tuple[Service, str]
) -> None:
    fake, url = service
    api = await start_api(tmp_path / "data", YOLO_SERVICE_URL=url, YOLO_TIMEOUT_S="1")
    try:
        key = api.new_key()
        png = picture_png()
        status, answer, _ = await post(http, api, key, {"image": base64.b64encode(png).decode()})
        assert status == 200, answer
        assert answer["detector"] == "remote" and (answer["width"], answer["height"]) == (120, 80)
        assert answer["detections"] == [{"label": "dog", "score": 0.87, "box": [10, 10, 40, 40]}]
        assert answer["counts"] == {"dog": 1}
        drawn = Image.open(io.BytesIO(base64.b64decode(str(answer["annotated_image"]))))
        assert drawn.size == (120, 80)
        assert drawn.convert("RGB").getpixel((25, 39)) != (255, 255, 255)  # the box's edge
        assert drawn.convert("RGB").getpixel((100, 70)) == BACKGROUND
        refusals = [
            ({}, "image"),
            (
                {"image": base64.b64encode(png).decode(), "image_url": "https://a.example/x.png"},
                "image",
            ),
            ({"image": "%%% not base64"}, "image"),
            ({"image": base64.b64encode(b"just text").decode()}, "image"),
            ({"image": base64.b64encode(png).decode(), "threshold": 0}, "threshold"),
            ({"image_url": "https://127.0.0.1/x.png"}, "image_url"),  # a private address
        ]
        for body, field in refusals:
            status, answer, _ = await post(http, api, key, body)
            assert status == 422, (body, answer)
            assert answer["error"]["field"] == field, (body, answer)  # type: ignore[index]
        fake.mode = "slow"
        status, answer, headers = await post(
            http, api, key, {"image": base64.b64encode(png).decode()}
        )
        assert status == 503 and "within 1 s" in answer["error"]["message"]  # type: ignore[index]
        assert headers["Retry-After"] == "30"
        fake.mode = "ok"
        status, _, _ = await post(http, api, None, {"image": base64.b64encode(png).decode()})
        assert status == 401
    finally:
        fake.mode = "ok"
        await api.stop()


async def test_the_api_detects_with_a_local_model(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    model = save_tiny_yolos(tmp_path / "yolos")
    api = await start_api(tmp_path / "data", DETECTOR_MODEL=str(model), DETECT_THRESHOLD="0.01")
    try:
        key = api.new_key()
        body = {"image": base64.b64encode(picture_png()).decode()}
        status, answer, _ = await post(http, api, key, body)
        assert status == 200, answer
        assert answer["detector"] == "local"
        detections = answer["detections"]
        assert isinstance(detections, list) and 1 <= len(detections) <= 10
        assert {d["label"] for d in detections} <= set(DETECTION_LABELS.values())
        assert sum(answer["counts"].values()) == len(detections)  # type: ignore[union-attr]
    finally:
        await api.stop()


async def test_analyze_in_discord_draws_and_counts_and_says_when_the_service_is_down(
    world: World, service: tuple[Service, str]
) -> None:
    fake = world.fake
    fake_service, url = service
    async with stand_in(world, YOLO_SERVICE_URL=url, YOLO_TIMEOUT_S="1") as bot:
        data_dir = Path(bot.env["DATA_DIR"])
        ix = await fake.send_slash_command("analyze", {"image": ("shapes.png", picture_png())})
        await ix.response()
        answer = await ix.wait_for_message(lambda m: bool(m.attachments), timeout=30)
        assert not answer.ephemeral
        assert answer.attachments[0].filename == "analyzed.png"
        embed = answer.embeds[0]
        assert embed["title"] == "What I see" and "**dog** × 1" in embed["description"]
        assert "1 objects · 120x80" in embed["footer"]["text"]
        assert answer.button_labels == ["Repaint dog 1", "Remove dog 1"]
        # Remove: an inpaint of the picture inside the dog's box (grown by 8%), as the clicker's.
        removed = await fake.click_button(answer, label="Remove dog 1", user=fake.bob)
        await removed.response()
        gone = await removed.wait_for_original(is_result, timeout=90)
        job = job_by_message(data_dir, gone.id)
        assert job["input"]["operation"] == "inpaint" and job["user_id"] == fake.bob.user.id
        mask = Image.open(data_dir / "images" / job["input"]["mask_image_key"]).convert("L")
        assert mask.size == (120, 80)
        assert mask.getpixel((25, 25)) == 255 and mask.getpixel((9, 9)) == 255  # box + margin
        assert mask.getpixel((100, 70)) == 0 and mask.getpixel((50, 50)) == 0
        # Repaint asks what to put there first.
        asked = await fake.click_button(answer, label="Repaint dog 1")
        painted = await fake.submit_modal(asked, {"prompt": "a red ball"})
        await painted.response()
        result = await painted.wait_for_original(is_result, timeout=90)
        assert job_by_message(data_dir, result.id)["prompt"] == "a red ball"
        # Apps → Analyze on a result: its first image, as stored.
        menu = await fake.send_message_command("Analyze", result, user=fake.bob)
        await menu.response()
        looked = await menu.wait_for_message(lambda m: bool(m.attachments), timeout=30)
        assert looked.embeds[0]["title"] == "What I see"
        assert "1 objects · 120x80" in looked.embeds[0]["footer"]["text"]
        words = await fake.post_message("no picture here", user=fake.bob)
        refused = await reply_text(await fake.send_message_command("Analyze", words))
        assert refused.ephemeral and "no picture to analyze" in refused.content
        korean = await fake.send_slash_command(
            "analyze", {"image": ("shapes.png", picture_png())}, locale="ko"
        )
        await korean.response()
        shown = await korean.wait_for_message(lambda m: bool(m.attachments), timeout=30)
        assert shown.embeds[0]["title"] == "보이는 것"
        fake_service.mode = "slow"
        slow = await fake.send_slash_command("analyze", {"image": ("shapes.png", picture_png())})
        await slow.response()
        told = await slow.wait_for_message(lambda m: "within 1 s" in m.content, timeout=30)
        assert told.ephemeral
        fake_service.mode = "down"
        down = await fake.send_slash_command("analyze", {"image": ("shapes.png", picture_png())})
        await down.response()
        told = await down.wait_for_message(lambda m: "cannot be reached" in m.content, timeout=30)
        assert told.ephemeral
        fake_service.mode = "ok"
        missing = await reply_text(await fake.send_slash_command("analyze", {}))
        assert missing.ephemeral and "Attach a picture" in missing.content
