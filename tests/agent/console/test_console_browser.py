"""The web console in a real browser: Playwright driving Debian's chromium (never a
browser Playwright downloads) against a real node serving its API and console on
127.0.0.1, and against two ``entraide run`` processes. Few and short: sign in, switch
language, submit and see it arrive on the live feed (the same node's, another node's),
look it up, ask for assistance, see a peer connect, add a peer from its card and remove
it; no page breaks its own CSP, fails axe-core's WCAG 2.1 A/AA rules or overflows a
400-pixel window.

Skipped, with the reason, only where chromium cannot be had (``scripts/_venv.sh``
installs it with apt-get when it runs as root). Screenshots of each page go to the
test's temporary directory, or to ``$ENTRAIDE_CONSOLE_SCREENSHOTS`` when set (that is
how docs/console/*.png are made).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.console._console_helpers import Console, running_console

pytestmark = pytest.mark.slow

playwright = pytest.importorskip("playwright.async_api",
                                 reason="playwright is not installed (pip install -e .[test])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on this machine: scripts/_venv.sh installs it with apt-get "
                "when run as root (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(tmp_path) as started:
        yield started


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with playwright.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                args=args)
        try:
            yield launched
        finally:
            await launched.close()


class Tab:
    """One page of a browser context, with the problems it logged (CSP violations,
    script errors, failed requests)."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.problems: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(msg.text))
        page.on("pageerror", lambda exc: self.problems.append(str(exc)))
        # The feed's stream is cut when the page is left: not a problem.
        page.on("requestfailed", lambda req: self.problems.append(f"failed: {req.url}")
                if "/console/stream" not in req.url else None)

    async def go(self, path: str) -> None:
        await self.page.goto(self.base + path)

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def base_of(node: Console) -> str:
    return str(node.server.make_url("")).rstrip("/")


async def open_tab(browser: Any, base: str, tmp_path: Path, locale: str) -> Tab:
    context = await browser.new_context(locale=locale, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    shots = Path(os.environ.get("ENTRAIDE_CONSOLE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return Tab(await context.new_page(), base, shots)


async def sign_in(tab: Tab, token: str) -> None:
    await tab.go("/console/")
    await tab.page.fill("#token", token)
    await tab.page.click("form[action='/console/login'] button[type=submit]")
    await tab.page.wait_for_url("**/console/status")



async def live(page: Any) -> None:
    """Wait until the live feed says it is connected. A locator wait, not
    wait_for_function: the console's CSP forbids eval, and Playwright evaluates a
    string predicate with it when the first check fails (a flaky EvalError)."""
    await page.locator("#feed-state", has_text=re.compile(r"^\s*Live")).wait_for(
        timeout=30_000)

async def test_console_browser_sign_in_switch_language_and_feed(
        node: Console, browser: Any, tmp_path: Path) -> None:
    tab = await open_tab(browser, base_of(node), tmp_path, "fr-CA")
    page = tab.page
    await tab.go("/console/")
    assert await page.get_attribute("html", "lang") == "fr"  # Accept-Language
    await tab.shot("login-fr")
    await sign_in(tab, node.tokens["write"])
    assert "Nœud QC" in await page.inner_text("h1")
    await tab.shot("status-fr")

    # The switch keeps the page, and sticks.
    await tab.go("/console/federation")
    await page.click("a[hreflang=en]")
    await page.wait_for_url("**/console/federation")
    assert await page.get_attribute("html", "lang") == "en"
    assert await page.inner_text("h1") == "Federation"
    await tab.shot("federation-en")
    await tab.go("/console/rules")
    assert await page.get_attribute("html", "lang") == "en"

    # The live feed: open, then an observation submitted through the form arrives.
    await tab.go("/console/feed")
    await live(page)
    other = await open_tab(browser, base_of(node), tmp_path, "en-CA")
    await sign_in(other, node.tokens["write"])
    await other.go("/console/submit")
    await other.page.select_option("#type", "domain-name")
    await other.page.fill("#value", "c2.example.org")
    await other.page.fill("#confidence", "70")
    await other.page.fill("#description_en", "Command and control")
    await other.page.fill("#description_fr", "Commande et contrôle")
    await other.page.click("form[action='/console/submit'] button[type=submit]")
    await other.page.wait_for_url("**/console/observations/*")
    assert "Observation shared." in await other.page.inner_text("main")
    await other.shot("observation-en")
    row = page.locator("#feed tr", has_text="c2.example.org")
    await row.wait_for()
    await tab.shot("feed-en")

    # From the feed to the observation, then to everyone who reported it.
    await row.locator("a").click()
    await page.wait_for_url("**/console/observations/*")
    assert "Command and control" in await page.inner_text("main")
    await tab.go("/console/search?type=domain-name&value=c2.example.org")
    assert await page.locator("main table a", has_text="c2.example.org").count() == 1
    await tab.shot("search-en")
    assert not tab.problems, tab.problems
    assert not other.problems, other.problems


async def test_console_browser_aid_request_and_read_only_token(
        node: Console, browser: Any, tmp_path: Path) -> None:
    tab = await open_tab(browser, base_of(node), tmp_path, "fr-CA")
    page = tab.page
    await sign_in(tab, node.tokens["admin"])
    await tab.go("/console/aid")
    await page.fill("#title", "Rançongiciel à l'hôpital")
    await page.select_option("#severity", "critical")
    await page.check("#need-forensics")
    await page.fill("#contact_name", "Centre des opérations")
    await page.fill("#description_fr", "Serveurs de fichiers chiffrés")
    await page.click("form[method=post][action='/console/aid'] button[type=submit]")
    await page.wait_for_url("**/console/aid/*")
    assert "Votre demande d'aide est envoyée." in await page.inner_text("main")
    assert "criminalistique" in await page.inner_text("main")
    await tab.shot("aid-fr")
    for name in ("trust", "tokens", "verify"):
        await tab.go(f"/console/{name}")
        await tab.shot(f"{name}-fr")
    assert not tab.problems, tab.problems

    reader = await open_tab(browser, base_of(node), tmp_path, "en-CA")
    await sign_in(reader, node.tokens["read"])
    links = await reader.page.locator("nav a").all_inner_texts()
    assert "Mutual aid" in links and "Trust list" not in links and "Submit" not in links
    await reader.go("/console/aid")
    assert await reader.page.locator("#title").count() == 0  # no form to ask for help
    await reader.go("/console/trust")
    assert "scope does not allow" in await reader.page.inner_text("main")


async def test_console_browser_edit_a_peer_by_keyboard_and_read_token_refused(
        node: Console, browser: Any, tmp_path: Path) -> None:
    """An admin edits ON's URL and jurisdiction, then takes its new key from its new
    card after the fingerprint is shown, reaching every field with the keyboard; a
    read token is refused the edit page."""
    from protocol.cards import PeerCard, encode_card
    from tests.agent._api_helpers import identity

    for locale, lang in (("fr-CA", "fr"), ("en-CA", "en")):
        tab = await open_tab(browser, base_of(node), tmp_path, locale)
        page = tab.page
        await sign_in(tab, node.tokens["admin"])
        await tab.go("/console/trust")
        await page.click("#trusted tr[data-peer=ON] td.actions a")
        await page.wait_for_url("**/console/trust/ON/edit")
        await page.focus("#url")
        await page.keyboard.press("Control+A")
        await page.keyboard.type(f"https://on-{lang}.example:8471")
        await page.keyboard.press("Tab")  # to the jurisdiction, past the help text
        assert await page.evaluate("document.activeElement.id") == "edit-jurisdiction"
        await page.keyboard.press("Control+A")
        await page.keyboard.type("Ontario")
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        assert "ON" in await page.inner_text(".flash")
        row = page.locator("#trusted tr[data-peer=ON]")
        assert f"https://on-{lang}.example:8471" in await row.inner_text()
        assert "Ontario" in await row.inner_text()

        new = identity(f"ON-{lang}").public_key
        await tab.go("/console/trust/ON/edit")
        await tab.shot(f"trust-edit-{lang}")
        await page.fill("#card", encode_card(PeerCard("ON", new, f"https://on-{lang}.example")))
        async with page.expect_navigation():
            await page.click("#card-form button[type=submit]")
        assert await page.inner_text("#card-fingerprint") == new.fingerprint
        await tab.shot(f"trust-new-key-{lang}")
        await page.check("#confirmed")
        async with page.expect_navigation():
            await page.click("#key-form button[type=submit]")
        assert new.fingerprint in await page.locator(
            "#trusted tr[data-peer=ON]").inner_text()
        assert not tab.problems, tab.problems

    reader = await open_tab(browser, base_of(node), tmp_path, "en-CA")
    await sign_in(reader, node.tokens["read"])
    await reader.go("/console/trust/ON/edit")
    assert "scope does not allow" in await reader.page.inner_text("main")
    assert await reader.page.locator("#url").count() == 0


async def test_console_browser_expertise_directory(
        node: Console, browser: Any, tmp_path: Path) -> None:
    """The admin publishes this node's capability profile from the directory page
    (linked from the navigation), then asks who can help with a need, in a language,
    now; a read token sees the directory and no form."""
    tab = await open_tab(browser, base_of(node), tmp_path, "fr-CA")
    page = tab.page
    await sign_in(tab, node.tokens["admin"])
    await page.click("nav a[href='/console/capabilities']")
    await page.wait_for_url("**/console/capabilities")
    assert await page.inner_text("h1") == "Répertoire d'expertise"
    await page.check("#skill-forensics")
    await page.check("#skill-malware-analysis")
    await page.fill("#languages", "fr, en")
    await page.fill("#hours", "24/7")
    await page.fill("#contact_name", "Centre des opérations")
    await page.fill("#contact_channel", "+1 418 555 0100")
    await page.fill("#detail_fr", "Deux analystes en criminalistique")
    async with page.expect_navigation():
        await page.click("#profile-form button[type=submit]")
    assert await page.inner_text(".flash") == "Le profil de ce nœud est publié."
    row = page.locator("#profiles tr[data-origin=QC]")
    assert "criminalistique" in await row.inner_text()
    await page.select_option("#need", "forensics")
    await page.fill("#language", "fr")
    await page.check("#available")
    async with page.expect_navigation():
        await page.click("form[role=search] button[type=submit]")
    assert await row.count() == 1
    await tab.shot("capabilities-fr")
    await page.select_option("#need", "recovery")
    async with page.expect_navigation():
        await page.click("form[role=search] button[type=submit]")
    assert await row.count() == 0
    assert "Aucun profil de membre ne correspond." in await page.inner_text("#profiles")
    assert not tab.problems, tab.problems

    reader = await open_tab(browser, base_of(node), tmp_path, "en-CA")
    await sign_in(reader, node.tokens["read"])
    await reader.go("/console/capabilities")
    assert await reader.page.inner_text("h1") == "Expertise directory"
    assert await reader.page.locator("#profiles tr[data-origin=QC]").count() == 1
    assert await reader.page.locator("#profile-form").count() == 0
    await reader.shot("capabilities-en")


async def test_console_browser_pages_pass_axe_and_fit_a_narrow_window(
        node: Console, browser: Any, tmp_path: Path) -> None:
    """WCAG 2.1 A/AA rules of axe-core (contrast, labels, landmarks...) on every page
    in both languages (a screenshot of each), and no page wider than a 400-pixel
    window."""
    axe = pytest.importorskip("axe_playwright_python.async_playwright",
                              reason="axe-playwright-python is not installed").Axe()
    found: dict[str, list[str]] = {}
    for locale in ("fr-CA", "en-CA"):
        tab = await open_tab(browser, base_of(node), tmp_path, locale)
        await sign_in(tab, node.tokens["admin"])
        for path in ("/console/login", "/console/status", "/console/federation",
                     "/console/feed", "/console/search", "/console/submit", "/console/aid",
                     "/console/rules", "/console/trust", "/console/tokens", "/console/verify",
                     "/console/capabilities", "/console/trust/ON/edit"):
            await tab.go(path)
            results = await axe.run(tab.page, options={
                "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a",
                                                      "wcag21aa"]}})
            bad = [f"{v['id']}: {v['help']}" for v in results.response["violations"]]
            await tab.shot(f"page-{path.rsplit('/', 1)[-1]}-{locale[:2]}")
            if bad:
                found[f"{locale} {path}"] = bad
        await tab.page.set_viewport_size({"width": 400, "height": 800})
        for path in ("/console/status", "/console/federation", "/console/aid",
                     "/console/trust", "/console/submit", "/console/capabilities",
                     "/console/trust/ON/edit"):
            await tab.go(path)
            wide = await tab.page.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth")
            if wide > 0:
                found[f"{locale} {path} at 400px"] = [f"{wide}px too wide"]
    assert not found, found


async def test_console_browser_two_real_nodes(browser: Any, tmp_path: Path) -> None:
    """Two ``entraide run`` processes, QC dialling ON: QC's console sees ON connect; an
    observation submitted in QC's console arrives on ON's live feed; QC asks for help,
    ON offers, withdraws, offers again, QC accepts; a peer is added from its card
    (fingerprint shown for the phone check) and removed again."""
    from agent.cli.localfed import LocalFederation
    from protocol.cards import PeerCard, encode_card
    from tests.agent._api_helpers import identity

    fed = LocalFederation(tmp_path / "fed", [("QC", "Québec"), ("ON", "Ontario")],
                          [("QC", "ON")])
    await asyncio.to_thread(fed.set_up)
    await asyncio.to_thread(fed.start)
    try:
        qc_node, on_node = fed["QC"], fed["ON"]
        shots = tmp_path / "shots"
        qc = await open_tab(browser, qc_node.api, shots, "fr-CA")
        await sign_in(qc, qc_node.token)
        await qc.go("/console/federation")
        row = qc.page.locator("#peers tr[data-peer=ON]")
        for _attempt in range(120):  # the link comes up within seconds
            if "non connecté" not in await row.inner_text():
                break
            await asyncio.sleep(0.25)
            await qc.page.reload()
        assert "connecté" in await row.inner_text() and "non" not in await row.inner_text()
        await qc.shot("federation-two-nodes-fr")

        on = await open_tab(browser, on_node.api, shots, "en-CA")
        await sign_in(on, on_node.token)
        await on.go("/console/feed")
        await live(on.page)
        await qc.go("/console/submit")
        await qc.page.fill("#value", "192.0.2.44")
        await qc.page.click("form[action='/console/submit'] button[type=submit]")
        await qc.page.wait_for_url("**/console/observations/*")
        arrived = on.page.locator("#feed tr", has_text="192.0.2.44")
        await arrived.wait_for(timeout=30_000)
        assert "QC" in await arrived.inner_text()

        # Mutual aid across the two: QC asks, ON offers, QC accepts.
        await qc.go("/console/aid")
        await qc.page.fill("#title", "Intrusion au ministère")
        await qc.page.check("#need-threat-hunting")
        await qc.page.fill("#contact_name", "Centre des opérations")
        await qc.page.fill("#description_fr", "Mouvement latéral observé")
        await qc.page.click("form[method=post][action='/console/aid'] button[type=submit]")
        await qc.page.wait_for_url("**/console/aid/*")
        request_url = qc.page.url
        await on.go(request_url.removeprefix(qc_node.api))
        for _attempt in range(120):  # until the request has reached ON
            if await on.page.locator("#kind-threat-hunting").count():
                break
            await asyncio.sleep(0.25)
            await on.page.reload()
        await on.page.check("#kind-forensics")
        async with on.page.expect_navigation():
            await on.page.click("form[action$='/offers'] button[type=submit]")
        async with on.page.expect_navigation():  # a second thought: withdrawn
            await on.page.click("form[action$='/withdraw'] button")
        assert await on.page.inner_text(".flash") == "Your offer is withdrawn."
        assert "— withdrawn" in await on.page.inner_text("main")
        await on.page.check("#kind-threat-hunting")
        await on.page.fill("#detail", "Two hunters, remote")
        async with on.page.expect_navigation():
            await on.page.click("form[action$='/offers'] button[type=submit]")
        assert await on.page.inner_text(".flash") == "Your offer is sent."
        accept = qc.page.locator("li", has_text="Two hunters").locator(
            "form[action$='/accept'] button")
        for _attempt in range(120):  # until the offer has reached QC
            if await accept.count():
                break
            await asyncio.sleep(0.25)
            await qc.page.reload()
        async with qc.page.expect_navigation():
            await accept.click()
        assert await qc.page.inner_text(".flash") == "L'offre est acceptée."
        assert "— acceptée" in await qc.page.inner_text("main")  # the offer's status

        key = identity("BC").public_key
        await qc.go("/console/trust")
        await qc.page.fill("#card", encode_card(PeerCard("BC", key, "https://bc.example")))
        await qc.page.click("form[action='/console/trust/preview'] button[type=submit]")
        assert await qc.page.inner_text("#card-fingerprint") == key.fingerprint
        await qc.page.check("#confirmed")
        await qc.page.click("form[action='/console/trust/add'] button[type=submit]")
        await qc.page.wait_for_url("**/console/trust")
        assert await qc.page.locator("#trusted tr[data-peer=BC]").count() == 1
        await qc.page.click("#trusted tr[data-peer=BC] button.danger")
        await qc.page.wait_for_url("**/console/trust")
        assert await qc.page.locator("#trusted tr[data-peer=BC]").count() == 0
        assert "BC" not in {p["name"] for p in qc_node.call("GET", "/api/v1/peers")["peers"]}

        # Lag: none once both hold the same; ON stopped while QC writes 3 entries lags
        # by 3, and by none again once it is back and has caught up.
        async def lag_is(text: str) -> None:
            for _attempt in range(240):
                await qc.go("/console/federation")
                if (await qc.page.inner_text("#peers tr[data-peer=ON] td.lag")).strip() == text:
                    return
                await asyncio.sleep(0.25)
            raise AssertionError(f"ON's lag never showed {text!r}")

        await lag_is("0")
        await asyncio.to_thread(fed.stop, ["ON"])
        await asyncio.to_thread(qc_node.call, "POST", "/api/v1/observations", {
            "observations": [{"type": "ipv4-addr", "value": f"192.0.2.{60 + i}",
                              "tlp": "GREEN"} for i in range(3)]})
        await lag_is("3")
        await qc.shot("federation-lag-fr")
        await asyncio.to_thread(fed.start, ["ON"])
        await lag_is("0")
        assert not qc.problems, qc.problems
        assert not on.problems, on.problems
    finally:
        await asyncio.to_thread(fed.stop)

