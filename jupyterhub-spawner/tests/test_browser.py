"""A real browser (Debian's headless Chromium through Playwright): the user
logs in, sees the plugin's form on the hub's spawn page, picks a choice,
submits, and the server starts. The form's screenshot is saved under
tests/out/ for a person to look at."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import USER

OUT = Path(__file__).parent / "out"
CHROMIUM = "/usr/bin/chromium"


def browser_or_skip():
    why = None
    if not Path(CHROMIUM).exists():
        why = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed in the venv"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test, but {why}")
        print(f"\n*** SKIPPED (browser): {why} ***\n", file=sys.stderr)
        pytest.skip(why)


def test_the_spawn_form_in_a_browser_starts_the_chosen_server(stack, tmp_path):
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    host, hub = stack
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(f"{hub.url}/hub/login")
            page.fill("input[name=username]", USER)
            page.fill("input[name=password]", "anything")
            page.click("input[type=submit], button[type=submit]")
            page.goto(f"{hub.url}/hub/spawn/{USER}/browser")
            # The plugin's form, rendered by the host: the instance choice and
            # the local plugin's fields.
            page.wait_for_selector("select[name=interface]")
            assert page.locator("select[name=__instance]").count() == 1
            # Another instance shows its own form and hides this one's.
            page.select_option("select[name=__instance]", "queue")
            assert page.locator("input[name=cores]").is_visible()
            assert not page.locator("select[name=interface]").is_visible()
            page.select_option("select[name=__instance]", "local")
            assert not page.locator("input[name=cores]").is_visible()
            page.select_option("select[name=interface]", "notebook")
            page.screenshot(path=str(OUT / "spawn-form.png"), full_page=True)
            page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
            s = hub.wait_ready("browser")
            assert s["ready"]
        finally:
            browser.close()

    spawns = [x for x in host.api("GET", f"/v1/spawns?user={USER}").json() if x["server_name"] == "browser"]
    assert spawns and spawns[-1]["options"]["interface"] == "notebook", spawns
    hub.api("DELETE", f"/users/{USER}/servers/browser")
    hub.wait_gone("browser")
    assert (OUT / "spawn-form.png").stat().st_size > 1000
