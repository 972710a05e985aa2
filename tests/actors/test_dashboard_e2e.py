"""The dashboard in a real browser: headless Chromium (Debian's), driven by Playwright,
against the shared running tree. Log in, add a provider pointing at a fake LLM and see
its answer stream into the chat, enable a fixture plugin and use its command, kill an
actor and watch its restart appear. Screenshots of the main pages go to
``test-output/screenshots/`` (CI keeps them; git ignores them)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.actors.test_dashboard_api import PASSWORD, set_password
from tests.conftest import REPO_ROOT, Runtime
from tests.peers.openai_server import FakeLLM

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO_ROOT / "test-output" / "screenshots"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
def streaming_llm() -> Any:
    fake = FakeLLM(model_tag="e2e").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Any, runtime: Runtime) -> AsyncIterator[Any]:
    await set_password(runtime)
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    p = await context.new_page()
    p.set_default_timeout(30_000)
    yield p
    await context.close()


async def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def login(page: Any, rt: Runtime) -> None:
    await page.goto(rt.dashboard + "/")
    await page.fill("#login-password", "wrong password")
    await page.click("#login-submit")
    await page.wait_for_selector("#login-error:has-text('wrong')")
    await shot(page, "login")
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await page.wait_for_selector("nav a[href='#/chat']")


async def go(page: Any, route: str) -> None:
    await page.click(f"nav a[href='#/{route}']")
    await page.wait_for_function(f"location.hash === '#/{route}'")


async def say(page: Any, text: str, *, done: bool = True) -> Any:
    """Send ``text`` in the chat page (with the keyboard); its bot bubble, once the
    reply is complete when ``done``."""
    before = await page.locator(".msg.bot").count()
    await page.fill("#chat-input", text)
    await page.press("#chat-input", "Enter")
    bubble = page.locator(".msg.bot").nth(before)
    await bubble.wait_for()
    if done:
        await page.wait_for_function(
            """(n) => {
                const b = document.querySelectorAll('.msg.bot')[n];
                return b && !b.classList.contains('waiting')
                    && !b.classList.contains('streaming');
            }""",
            arg=before,
        )
    return bubble


async def test_log_in_add_a_provider_and_see_its_answer_stream(
    page: Any, runtime: Runtime, streaming_llm: FakeLLM
) -> None:
    await login(page, runtime)
    first = await page.evaluate(
        "document.querySelector('a[href], button, input, select, textarea').id"
    )
    assert first == "skip-link", "the first stop for the keyboard skips to the content"
    await page.focus("#skip-link")
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"

    await go(page, "providers")
    await page.fill("#provider-id", "e2e")
    await page.fill("#provider-model", "openai/e2e")
    await page.fill("#provider-api-base", streaming_llm.base_url)
    await page.fill("#provider-api-key", "sk-e2e-secret")
    await page.click("#provider-save")
    row = page.locator("tr[data-provider='e2e']")
    await row.wait_for()
    try:
        await row.locator(".provider-test").click()
        await row.locator(".test-result:has-text('ms')").wait_for()
        for _ in range(2):  # to the top of the fallback order
            await page.locator("tr[data-provider='e2e'] .provider-up").click()
            await page.wait_for_timeout(300)
        await page.wait_for_function(
            "document.querySelector('tr[data-provider]').dataset.provider === 'e2e'"
        )
        await shot(page, "providers")
        assert "sk-e2e-secret" not in await page.content()

        await go(page, "chat")
        await page.wait_for_selector("#chat-log")
        # Watch the bot's bubble: streamed text grows before the reply is final.
        await page.evaluate(
            """() => {
                window.__seen = [];
                new MutationObserver(() => {
                    const bots = document.querySelectorAll('.msg.bot .text');
                    const last = bots[bots.length - 1];
                    if (last) window.__seen.push(last.textContent);
                }).observe(document.querySelector('#chat-log'),
                           {subtree: true, childList: true, characterData: true});
            }"""
        )
        streaming_llm.reset()
        streaming_llm.stream_delay = 0.12  # one word at a time, visibly
        bubble = await say(page, "hello from the browser with several words", done=False)
        await bubble.locator(".text:has-text('(turn 1)')").wait_for()
        final = await bubble.locator(".text").inner_text()
        assert final == "echo: hello from the browser with several words (turn 1)"
        assert streaming_llm.user_turns(), "the provider added in the browser answered"
        seen = [s for s in await page.evaluate("window.__seen") if s]
        partial = [s for s in seen if s and s != final and final.startswith(s.strip())]
        assert partial, f"the answer arrived in pieces: {seen}"
        await shot(page, "chat")
    finally:
        await page.evaluate(
            """async () => {
                const me = await (await fetch('/api/auth/me')).json();
                const h = {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf};
                await fetch('/api/providers/order', {method: 'PUT', headers: h,
                    body: JSON.stringify({fallback: ['primary', 'fallback']})});
                await fetch('/api/providers/e2e', {method: 'DELETE', headers: h});
            }"""
        )


async def test_enable_a_plugin_and_use_its_command(page: Any, runtime: Runtime) -> None:
    await login(page, runtime)
    await go(page, "plugins")
    row = page.locator("tr[data-plugin='dice']")
    toggle = row.locator(".plugin-toggle")
    await toggle.wait_for()
    assert (await toggle.inner_text()).strip() == "Enable"
    await toggle.click()
    await row.locator(".plugin-toggle:has-text('Disable')").wait_for()
    await shot(page, "plugins")
    try:
        await go(page, "chat")
        bubble = None
        for _ in range(10):  # hosts see the switch within their 2 s settings cache
            bubble = await say(page, "/roll 3")
            text = await bubble.locator(".text").inner_text()
            if text.strip() == "rolled 18":
                break
            await page.wait_for_timeout(1000)
        assert bubble is not None
        assert (await bubble.locator(".text").inner_text()).strip() == "rolled 18"
    finally:
        await go(page, "plugins")
        await page.locator("tr[data-plugin='dice'] .plugin-toggle:has-text('Disable')").click()
        await page.locator("tr[data-plugin='dice'] .plugin-toggle:has-text('Enable')").wait_for()


async def test_a_killed_actor_shows_its_restart(page: Any, runtime: Runtime) -> None:
    await login(page, runtime)
    await go(page, "actors")
    row = page.locator("tr[data-actor='sandbox-0']")
    await row.wait_for()
    pid = int((await row.locator(".pid").inner_text()).strip())
    restarts = int((await row.locator(".restarts").inner_text()).strip() or 0)
    os.kill(pid, signal.SIGKILL)
    await page.wait_for_function(
        """([pid, restarts]) => {
            const row = document.querySelector("tr[data-actor='sandbox-0']");
            if (!row) return false;
            const p = parseInt(row.querySelector('.pid').textContent, 10);
            const r = parseInt(row.querySelector('.restarts').textContent || '0', 10);
            return p !== pid && r > restarts;
        }""",
        arg=[pid, restarts],
        timeout=60_000,
    )
    await page.locator("#actor-events:has-text('sandbox-0')").wait_for()
    await shot(page, "actors")


async def test_screenshots_of_the_other_pages_and_a_phone(page: Any, runtime: Runtime) -> None:
    await login(page, runtime)
    for route in (
        "platforms",
        "personas",
        "knowledge",
        "conversations",
        "logs",
        "metrics",
        "settings",
    ):
        await go(page, route)
        await page.wait_for_load_state("networkidle")
        await page.wait_for_timeout(300)
        await shot(page, route)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(runtime.dashboard + "/#/chat")
    toggle = page.locator("#menu-toggle")
    await toggle.wait_for()
    assert await toggle.get_attribute("aria-expanded") == "false"
    await toggle.click()
    assert await toggle.get_attribute("aria-expanded") == "true"
    await page.locator("nav a[href='#/actors']").wait_for(state="visible")
    await shot(page, "phone-menu")
