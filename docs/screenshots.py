"""Take the README's screenshots of the web chat: the product started as its own process
with the tiny model, a real Chromium (Debian's ``chromium``) on a desktop-sized and a
phone-sized window, one finished prompt each. The Korean one needs a Korean font
(Debian: fonts-nanum).

    python docs/screenshots.py            # writes docs/images/web-chat*.png
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from api_support import start_api  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

OUT = ROOT / "docs" / "images"
SHOTS = (
    ("web-chat.png", {"width": 1100, "height": 820}, "en-US", "a lighthouse on a cliff at dusk"),
    ("web-chat-phone-ko.png", {"width": 390, "height": 844}, "ko-KR", "눈 속의 붉은 여우"),
)


async def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        api = await start_api(Path(folder) / "data")
        try:
            async with async_playwright() as driver:
                browser = await driver.chromium.launch(
                    executable_path=chromium, args=["--no-sandbox"]
                )
                for name, viewport, locale, prompt in SHOTS:
                    context = await browser.new_context(viewport=viewport, locale=locale)
                    page = await context.new_page()
                    await page.goto(f"{api.base}/")
                    await page.locator("#key").fill(api.new_key("screenshots"))
                    await page.locator("#key-form button[type=submit]").click()
                    await page.locator("#prompt").fill(prompt)
                    await page.locator("#count").evaluate("input => input.value = '2'")
                    await page.locator("#generate").click()
                    await page.locator('.turn[data-state="done"] .images img').last.wait_for(
                        timeout=120_000
                    )
                    await page.screenshot(path=str(OUT / name), full_page=True)
                    print(f"wrote {OUT / name}")
                    await context.close()
                await browser.close()
        finally:
            await api.stop()


if __name__ == "__main__":
    asyncio.run(main())
