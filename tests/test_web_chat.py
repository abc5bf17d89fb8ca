"""The web chat in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against the product as its own process with the tiny model: a key, a prompt whose progress
bar moves, its image, a cancelled job, a downloaded PNG with its parameters, refusals, and
the page in Korean. A failing test leaves a screenshot (its path is in the failure)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from api_support import ApiProcess, start_api
from e2e_support import hold_jobs
from fakediscord.server import FakeDiscord
from PIL import Image

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.asyncio(loop_scope="module")
# CI installs Debian's chromium and sets REQUIRE_BROWSER=1: there a missing browser fails.
CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
if CHROMIUM is None and os.environ.get("REQUIRE_BROWSER") != "1":
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiProcess]:
    started = await start_api(tmp_path_factory.mktemp("web") / "data")
    try:
        yield started
    finally:
        await started.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    assert CHROMIUM is not None, "REQUIRE_BROWSER=1 but no chromium: apt-get install chromium"
    async with playwright_api.async_playwright() as driver:
        launched = await driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


Page = Any


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(
    browser: Any, api: ApiProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[Page]]]:
    """Open the chat (in a locale), with a screenshot of every open page if the test fails."""
    contexts: list[Any] = []
    console: list[str] = []  # what the pages logged, shown when the test fails

    async def opener(locale: str = "en-US") -> Page:
        context = await browser.new_context(locale=locale, accept_downloads=True)
        contexts.append(context)
        page = await context.new_page()
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        await page.goto(f"{api.base}/")
        return page

    yield opener
    failed = getattr(request.node, "rep_call", None)
    for number, context in enumerate(contexts):
        if failed is not None and failed.failed:
            for page in context.pages:
                shot = Path(os.environ.get("SCREENSHOT_DIR", tmp_path)) / (
                    f"{request.node.name}-{number}.png"
                )
                await page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}")
        await context.close()
    if failed is not None and failed.failed:
        print("--- the pages' console ---", *console[-40:], sep="\n")
        print("--- the API's output (its end) ---", api.output[-4000:], sep="\n")


async def sign_in(page: Page, api: ApiProcess, *options: str) -> None:
    await page.get_by_role("textbox", name="API key").fill(api.new_key("browser", *options))
    await page.get_by_role("button", name="Save").click()
    await page.get_by_text("Key saved in this browser.").wait_for()


async def ask(page: Page, prompt: str, steps: int = 6, count: int = 1) -> Any:
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    if not await page.locator("#advanced").evaluate("details => details.open"):
        await page.get_by_text("Advanced settings").click()
    await page.get_by_label("Steps").fill(str(steps))
    await page.get_by_label("Images").fill(str(count))
    await page.get_by_role("button", name="Generate").click()
    return page.locator(".turn", has_text=prompt).last


async def test_a_prompt_shows_progress_then_its_image_to_download(
    api: ApiProcess, open_page: Callable[..., Awaitable[Page]]
) -> None:
    page = await open_page()
    await sign_in(page, api)
    with hold_jobs(api.data_dir, "lantern in fog", 3) as release:
        turn = await ask(page, "a lantern in fog", steps=6)
        await turn.wait_for()
        bar = turn.locator("progress")
        await page.wait_for_function(
            "bar => bar.value > 0 && bar.value < 100",
            arg=await bar.element_handle(),
            timeout=60_000,
        )
        assert "Denoising: step" in await turn.locator(".status").inner_text()
        release()
        done = page.locator('.turn[data-state="done"]', has_text="a lantern in fog")
        await done.wait_for(timeout=60_000)
    picture = turn.locator(".images img")
    await picture.wait_for()
    assert "a lantern in fog" in (await picture.get_attribute("alt") or "")
    assert await bar.evaluate("bar => bar.value") == 100
    async with page.expect_download() as waiting:
        await turn.get_by_role("link", name="Download PNG").click()
    download = await waiting.value
    data = await asyncio.to_thread(Path(await download.path()).read_bytes)
    with Image.open(io.BytesIO(data)) as png:
        assert png.format == "PNG"
        assert "a lantern in fog" in png.info["parameters"]
        assert "Steps: 6" in png.info["parameters"]


async def test_zoom_compare_and_a_share_link_opened_logged_out(
    api: ApiProcess, browser: Any, open_page: Callable[..., Awaitable[Page]]
) -> None:
    page = await open_page()
    await sign_in(page, api)
    first = await ask(page, "two paper boats", steps=2, count=2)
    await page.locator('.turn[data-state="done"]', has_text="two paper boats").wait_for()

    # Zoom: a lightbox that arrow keys walk through.
    pictures = first.locator(".images img")
    await pictures.first.click()
    viewer = page.get_by_role("dialog")
    await viewer.get_by_role("heading", name="Image 1 of 2").wait_for()
    await page.keyboard.press("ArrowRight")
    await viewer.get_by_role("heading", name="Image 2 of 2").wait_for()
    shown = await viewer.locator("img.zoomed").get_attribute("src")
    assert shown == await pictures.nth(1).get_attribute("src")
    await page.keyboard.press("Escape")
    await viewer.wait_for(state="detached")

    # Compare with the previous generation: side by side, then a slider.
    second = await ask(page, "one paper plane", steps=2)
    await page.locator('.turn[data-state="done"]', has_text="one paper plane").wait_for()
    await second.get_by_role("button", name="Compare with the previous").click()
    assert await viewer.locator(".side-by-side img").count() == 2
    await viewer.get_by_role("button", name="Slider").click()
    slider = viewer.get_by_label("Slide between them")
    await slider.fill("80")
    clip = await viewer.locator(".stack .top").evaluate("img => img.style.clipPath")
    assert "80%" in clip
    await viewer.get_by_role("button", name="Close").click()

    # Zoom out and pan: outpainting jobs of their own, each a new, larger picture.
    width = await second.locator(".images img").evaluate("img => img.naturalWidth")
    turns = page.locator(".turn")
    before = await turns.count()
    await second.get_by_role("button", name="Zoom out").click()
    await page.locator('.turn[data-state="done"]').nth(before).wait_for(timeout=60_000)
    await second.get_by_role("button", name="Pan right").click()
    await page.locator('.turn[data-state="done"]').nth(before + 1).wait_for(timeout=60_000)
    widths = [
        await turns.nth(n).locator(".images img").evaluate("img => img.naturalWidth")
        for n in (before, before + 1)
    ]
    assert widths[0] == 2 * width and widths[1] > width, (width, widths)

    # Share: a public link that works without a key, with a preview for chats; then revoked.
    await second.get_by_role("button", name="Share").click()
    link = await second.get_by_label("Public link").input_value()
    job_id = await second.get_attribute("data-job")
    assert link.endswith(f"/s/{job_id}")
    stranger = await browser.new_context()
    try:
        public = await stranger.new_page()
        answer = await public.goto(link)
        assert answer is not None and answer.status == 200
        preview = await public.locator('meta[property="og:image"]').get_attribute("content")
        assert preview and preview.endswith(".png")
        assert await public.locator("img").first.evaluate(
            "img => img.complete && img.naturalWidth > 0"
        )
        await second.get_by_role("button", name="Revoke link").click()
        await second.get_by_text("The link is revoked.").wait_for()
        gone = await public.goto(link)
        assert gone is not None and gone.status == 404
    finally:
        await stranger.close()


async def test_styles_favourites_suggestions_and_the_gallery(
    api: ApiProcess, open_page: Callable[..., Awaitable[Page]]
) -> None:
    page = await open_page()
    await sign_in(page, api)
    await page.locator("summary", has_text="Advanced settings").click()
    await page.get_by_label("Style").select_option("photo")
    kettle = await ask(page, "a copper kettle", steps=2)
    await page.locator('.turn[data-state="done"]', has_text="a copper kettle").wait_for()
    async with page.expect_download() as waiting:
        await kettle.get_by_role("link", name="Download PNG").click()
    data = await asyncio.to_thread(Path(await (await waiting.value).path()).read_bytes)
    with Image.open(io.BytesIO(data)) as png:
        assert "photograph of a copper kettle" in png.info["parameters"]  # the style's template
    star = kettle.get_by_role("button", name="☆ Favourite")
    await star.click()
    await kettle.locator('.favourite[aria-pressed="true"]').wait_for()
    await page.get_by_label("Style").select_option("")
    await ask(page, "a copper teapot", steps=2)
    await page.locator('.turn[data-state="done"]', has_text="a copper teapot").wait_for()

    await page.get_by_label("Prompt", exact=True).fill("copper ke")
    suggestion = page.get_by_role("option").filter(has_text="a copper kettle")
    await suggestion.click()
    assert await page.get_by_label("Prompt", exact=True).input_value() == "a copper kettle"

    assert await page.locator("#dashboard").is_hidden()  # not an operator's key
    await page.get_by_text("Gallery: history and favourites").click()
    items = page.locator("#gallery-items figure")
    await playwright_api.expect(items).to_have_count(2)
    await page.locator("#gallery-q").fill("teapot")
    await page.locator("#gallery-form").get_by_role("button", name="Search").click()
    await playwright_api.expect(items.locator(".caption")).to_have_text(["a copper teapot"])
    await page.locator("#gallery-q").fill("")
    await page.get_by_role("button", name="Favourites", exact=True).click()
    # The gallery shows what was drawn: the prompt in its style's template.
    await playwright_api.expect(items.locator(".caption")).to_contain_text(["a copper kettle"])
    await items.first.locator("img").click()
    await page.get_by_role("dialog").get_by_role("heading", name="Image").wait_for()
    await page.keyboard.press("Escape")

    # Talking to a result: the box under it refines it into a new turn, chained to it.
    parent = await kettle.get_attribute("data-job")  # before a turn "a copper kettle → ..."
    await kettle.get_by_label("Change it").fill("make it night")
    await kettle.get_by_role("button", name="Refine").click()
    refined = page.locator('.turn[data-state="done"]', has_text="→ make it night")
    await refined.wait_for(timeout=60_000)
    job = await refined.evaluate("turn => turn.dataset.job")
    database = api.data_dir / "diffusion-chat.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as db:
        row = db.execute("SELECT parent_job_id, kind FROM jobs WHERE id = ?", (job,)).fetchone()
    assert row == (parent, "img2img")


async def test_log_in_with_discord_through_the_fake(
    browser: Any, tmp_path: Path, open_page: Callable[..., Awaitable[Page]]
) -> None:
    fake = FakeDiscord(spec=None)
    await fake.start()
    site = await start_api(
        tmp_path / "login-data",
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_CLIENT_ID=str(fake.application_id),
        DISCORD_CLIENT_SECRET=fake.oauth_secret,
    )
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{site.base}/")
        fake.oauth_denies = True
        await page.get_by_role("link", name="Log in with Discord").click()
        await page.get_by_role("alert").filter(has_text="Discord login was cancelled.").wait_for()
        fake.oauth_denies = False
        await page.get_by_role("link", name="Log in with Discord").click()
        await page.get_by_text("Logged in with Discord.").wait_for()
        assert "key=" not in page.url  # the key left the address bar at once
        turn = await ask(page, "a login lantern", steps=2)
        await page.locator('.turn[data-state="done"]', has_text="a login lantern").wait_for()
        job_id = await turn.get_attribute("data-job")
    finally:
        await context.close()
        await site.stop()
        await fake.stop()
    database = tmp_path / "login-data" / "diffusion-chat.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as db:
        (owner,) = db.execute("SELECT user_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert owner == fake.alice.user.id  # the Discord account: one history, one quota


async def test_feedback_and_the_operator_dashboard(
    api: ApiProcess, open_page: Callable[..., Awaitable[Page]]
) -> None:
    page = await open_page()
    await sign_in(page, api, "--operator")
    turn = await ask(page, "a brass compass", steps=2)
    await page.locator('.turn[data-state="done"]', has_text="a brass compass").wait_for()
    await turn.get_by_role("button", name="👍 Good").click()
    await turn.locator('.vote[data-vote="up"][aria-pressed="true"]').wait_for()
    await turn.get_by_role("button", name="👎 Poor").click()
    await turn.locator('.vote[data-vote="down"][aria-pressed="true"]').wait_for()
    assert await turn.locator('.vote[aria-pressed="true"]').count() == 1
    await turn.get_by_role("button", name="👍 Good").click()
    await turn.locator('.vote[data-vote="up"][aria-pressed="true"]').wait_for()

    await page.reload()  # the dashboard appears for an operator's key
    await page.get_by_text("Operator dashboard").click()
    figures = page.locator("#dashboard-figures")
    await playwright_api.expect(figures.locator('[data-figure="f-feedback"]')).to_have_text("1 / 0")
    jobs = int(await figures.locator('[data-figure="f-jobs"]').inner_text())
    assert jobs >= 1
    assert "tiny: 1 / 0" in await figures.locator('[data-figure="f-models"]').inner_text()
    chart = page.get_by_role("img", name="Generations a day and the p95 time")
    await chart.wait_for()
    assert await chart.evaluate("img => img.complete && img.naturalWidth > 0")


async def test_a_running_job_is_cancelled_from_its_turn(
    api: ApiProcess, open_page: Callable[..., Awaitable[Page]]
) -> None:
    page = await open_page()
    await sign_in(page, api)
    with hold_jobs(api.data_dir, "a slow tide", 2):
        turn = await ask(page, "a slow tide", steps=8)
        await turn.locator(".status", has_text="Denoising").wait_for(timeout=60_000)
        await turn.get_by_role("button", name="Cancel").click()
        await turn.locator(".status", has_text="Cancelled.").wait_for(timeout=60_000)
    assert await turn.locator(".images img").count() == 0


async def test_refusals_are_shown_and_nothing_is_sent_without_a_key(
    api: ApiProcess, open_page: Callable[..., Awaitable[Page]]
) -> None:
    page = await open_page()
    turn = await ask(page, "no key yet")
    await turn.locator(".status", has_text="Enter your API key first.").wait_for()
    await page.get_by_role("textbox", name="API key").fill("dc_not-a-real-key")
    await page.get_by_role("button", name="Save").click()
    turn = await ask(page, "a wrong key")
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert "key" in (await alert.inner_text()).lower()


async def test_the_page_speaks_korean_to_a_korean_browser(
    api: ApiProcess, open_page: Callable[..., Awaitable[Page]]
) -> None:
    page = await open_page("ko-KR")
    assert await page.evaluate("document.documentElement.lang") == "ko"
    assert await page.get_by_role("button", name="생성").is_visible()
    assert await page.get_by_label("프롬프트", exact=True).is_visible()
    await page.get_by_label("언어").select_option("en")
    assert await page.get_by_role("button", name="Generate").is_visible()
    await page.reload()
    assert await page.get_by_role("button", name="Generate").is_visible()  # remembered
