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


def _launch(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ],
    )


def test_profiles_a_refused_value_and_the_progress_page_in_a_browser(stack):
    """The example site plugin on the real Slurm: profile cards, a value the
    host refuses shown next to its field, the progress page, and the last
    choices remembered for the next start."""
    browser_or_skip()
    if not os.environ.get("WASMSPAWNER_SLURM_CONF"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test with Slurm: WASMSPAWNER_SLURM_CONF is not set")
        print("\n*** SKIPPED (browser + Slurm): WASMSPAWNER_SLURM_CONF is not set ***\n", file=sys.stderr)
        pytest.skip("no Slurm")
    from playwright.sync_api import sync_playwright

    host, hub = stack
    OUT.mkdir(exist_ok=True)
    site = "fieldset[data-instance=site]"
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"{hub.url}/hub/login")
            page.fill("input[name=username]", USER)
            page.fill("input[name=password]", "anything")
            page.click("input[type=submit], button[type=submit]")
            page.goto(f"{hub.url}/hub/spawn/{USER}/prof")
            page.wait_for_selector("select[name=__instance]")
            page.select_option("select[name=__instance]", "site")
            # Profiles are cards with their descriptions; the first is chosen.
            cards = page.locator(f"{site} label.ws-profile")
            assert cards.count() >= 2
            assert "1 core, 2 GiB" in cards.nth(0).inner_text()
            assert page.locator(f"{site} input[name=profile][value=quick]").is_checked()
            # Units beside the box, the range under it.
            mem = page.locator(f"{site} .ws-field[data-field=memory]")
            assert mem.locator(".input-group .input-group-text").inner_text() == "GiB"
            # Quick fixes memory: the box is greyed out and says so.
            assert mem.locator("input").is_disabled()
            assert "Set by this profile: 2 GiB" in mem.inner_text()
            page.locator(f"{site} label.ws-profile", has_text="Standard").click()
            assert mem.locator("input").is_enabled()
            assert "1–8 GiB" in mem.inner_text()
            page.screenshot(path=str(OUT / "spawn-form-profiles.png"), full_page=True)

            # A value the browser would stop (max) reaches the host, which
            # refuses it: the message stands next to the field, the value and
            # the choices are kept.
            page.evaluate("document.querySelector('fieldset[data-instance=site] input[name=memory]').removeAttribute('max')")
            mem.locator("input").fill("64")
            page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
            page.wait_for_selector(f"{site} .ws-field[data-field=memory] .ws-error")
            mem = page.locator(f"{site} .ws-field[data-field=memory]")
            assert "at most 8" in mem.locator(".ws-error").inner_text()
            assert mem.locator("input").input_value() == "64"
            assert page.locator(f"{site} input[name=profile][value=standard]").is_checked()
            assert page.locator("select[name=__instance]").input_value() == "site"
            page.screenshot(path=str(OUT / "spawn-form-refused.png"), full_page=True)
            assert not [s for s in host.api("GET", f"/v1/spawns?user={USER}").json() if s["server_name"] == "prof" and s.get("job_id")]

            # Quick starts on the real Slurm; the progress page shows the host's events.
            page.locator(f"{site} label.ws-profile", has_text="Quick look").click()
            page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
            page.wait_for_url("**/spawn-pending/**", timeout=30000)
            page.click("summary")  # open the event log
            page.wait_for_function(
                "() => /submitted|queued|running|ready/i.test(document.body.innerText)", timeout=60000
            )
            page.screenshot(path=str(OUT / "spawn-progress.png"), full_page=True)
            hub.wait_ready("prof")
            hub.api("DELETE", f"/users/{USER}/servers/prof")
            hub.wait_gone("prof")

            # The last choices come back (c.WasmSpawner.remember_options).
            page.goto(f"{hub.url}/hub/spawn/{USER}/prof")
            page.wait_for_selector("select[name=__instance]")
            assert page.locator("select[name=__instance]").input_value() == "site"
            assert page.locator(f"{site} input[name=profile][value=quick]").is_checked()
        finally:
            browser.close()
    for name in ("spawn-form-profiles.png", "spawn-form-refused.png", "spawn-progress.png"):
        assert (OUT / name).stat().st_size > 1000
