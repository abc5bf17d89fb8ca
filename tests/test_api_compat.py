"""Tools written for other APIs work against ours unchanged: the real ``webuiapi`` client of
AUTOMATIC1111's web UI (without a key, as it runs, on loopback with anonymous use on), and
the real ``openai`` SDK (with a key)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
import pytest_asyncio
import webuiapi
from api_support import ApiProcess, start_api
from e2e_support import hold_jobs
from PIL import Image

from engine.images import read_png_parameters

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiProcess]:
    data_dir = tmp_path_factory.mktemp("compat") / "data"
    server = await start_api(data_dir, API_ALLOW_ANONYMOUS="true")
    yield server
    await server.stop()


def webui(api: ApiProcess) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=api.port)


async def test_webui_client_txt2img_with_its_whole_payload(api: ApiProcess) -> None:
    client = webui(api)
    result = await asyncio.to_thread(
        client.txt2img,
        prompt="a castle on a hill",
        negative_prompt="blurry",
        seed=1234,
        steps=3,
        cfg_scale=6.5,
        width=64,
        height=64,
        batch_size=2,
        sampler_name="Euler a",
    )
    assert len(result.images) == 2
    assert all(image.size == (64, 64) for image in result.images)
    assert result.info["all_seeds"] == [1234, 1235]
    assert "a castle on a hill" in result.info["infotexts"][0]
    assert "Sampler: Euler a" in result.info["infotexts"][0]
    models = await asyncio.to_thread(client.util_get_model_names)
    assert "tiny" in models
    samplers = await asyncio.to_thread(client.get_samplers)
    assert "Euler a" in [sampler["name"] for sampler in samplers]


async def test_webui_client_img2img(api: ApiProcess) -> None:
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    result = await asyncio.to_thread(
        webui(api).img2img,
        images=[source],
        prompt="a red square, watercolor",
        steps=4,
        width=64,
        height=64,
        denoising_strength=0.5,
        seed=7,
    )
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]


async def test_progress_and_interrupt_are_the_callers_own(api: ApiProcess) -> None:
    client = webui(api)
    with hold_jobs(api.data_dir, "a slow river", from_step=2):
        running = asyncio.create_task(
            asyncio.to_thread(client.txt2img, prompt="a slow river", steps=6, width=64, height=64)
        )
        async with asyncio.timeout(30):
            while True:
                progress = await asyncio.to_thread(client.get_progress)
                if progress["state"]["sampling_step"] >= 1:
                    break
                await asyncio.sleep(0.1)
        assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 6
        assert progress["state"]["job_count"] == 1
        await asyncio.to_thread(client.interrupt)
        with pytest.raises(RuntimeError, match="interrupted"):
            await running
    idle = await asyncio.to_thread(client.get_progress)
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


async def test_a1111_errors_are_json_naming_the_field(api: ApiProcess) -> None:
    url = f"{api.base}/sdapi/v1/txt2img"
    async with aiohttp.ClientSession() as http:
        for body, field in (
            ({"prompt": "a cat", "sampler_name": "Hyper Sampler 9000"}, "sampler_name"),
            (
                {"prompt": "a cat", "override_settings": {"sd_model_checkpoint": "nope [abc]"}},
                "override_settings.sd_model_checkpoint",
            ),
            ({"prompt": "a cat", "batch_size": 4, "n_iter": 4}, "batch_size"),
            ({"prompt": "a cat", "width": 2048, "height": 2048}, "width"),
        ):
            async with http.post(url, json=body) as answer:
                assert answer.status == 422, await answer.text()
                assert (await answer.json())["error"]["field"] == field


async def test_openai_sdk_images_generate(api: ApiProcess) -> None:
    key = api.new_key("openai")
    client = openai.AsyncOpenAI(base_url=f"{api.base}/v1", api_key=key, max_retries=0)
    as_base64 = await client.images.generate(
        model="dall-e-2", prompt="a paper crane", n=2, size="256x256", response_format="b64_json"
    )
    assert len(as_base64.data) == 2
    png = base64.b64decode(as_base64.data[0].b64_json or "")
    assert Image.open(io.BytesIO(png)).size == (256, 256)
    assert "a paper crane" in (read_png_parameters(png) or "")
    as_url = await client.images.generate(prompt="a paper crane", size="256x256")
    url = as_url.data[0].url
    assert url is not None and url.endswith(".png")
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {key}"}) as answer,
    ):
        assert answer.status == 200 and answer.content_type == "image/png"
    with pytest.raises(openai.UnprocessableEntityError):
        await client.images.generate(prompt="a paper crane", size="4096x4096")
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(
            base_url=f"{api.base}/v1", api_key="dc_wrong", max_retries=0
        ).images.generate(prompt="x")
    await client.close()


async def test_anonymous_use_is_one_shared_account(api: ApiProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{api.base}/api/cv/diffusion/generate",
            json={"prompt": "an anonymous doodle", "steps": 2},
            headers={"Prefer": "wait=60"},
        ) as answer:
            job = await answer.json()
        assert answer.status == 200 and job["status"] == "succeeded"
        async with http.get(f"{api.base}/api/cv/diffusion/history") as answer:
            listed = await answer.json()
    assert job["id"] in [item["id"] for item in listed["items"]]
    assert json.dumps(listed)  # plain JSON all the way down
