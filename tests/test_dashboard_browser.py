"""The dashboard page in a real headless Chromium (Debian's ``chromium``), driven by
playwright: live updates, operator buttons, names as text, and a screenshot saved to
``artifacts/dashboard.png`` under the repository root."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
from dashboard_servers import DashboardProcess
from redbreaker import _policies
from redbreaker._state import State

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "browser-admin-token-0123456789abcdef"
XSS_NAME = "<img/src=x/onerror=alert(1)>"


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no", "off"}


def _missing(what: str) -> None:
    message = (
        f"{what}: the dashboard's browser tests need Debian's chromium at {CHROMIUM} "
        "(apt-get install -y chromium) and playwright (pip install 'redbreaker[test]')"
    )
    if _ci():
        pytest.fail(f"{message}, and CI is set: they must run in CI.", pytrace=False)
    pytest.skip(f"!!! {message}: the browser tests are SKIPPED !!!")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    executable = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if executable is None:
        _missing(f"{CHROMIUM} is missing")
    manager = sync_playwright().start()
    try:
        launched = manager.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    finally:
        manager.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 760})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def sync_store(redis_url: str) -> Iterator[redbreaker.Store]:
    store = redbreaker.connect(redis_url)
    yield store
    store.close()


def _breaker(store: redbreaker.Store, name: str) -> redbreaker.Breaker:
    breaker = redbreaker.Breaker(name, store=store, failure_threshold=3, minimum_calls=4)
    breaker.call(lambda: None)
    return breaker


def _fail(breaker: redbreaker.Breaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)


def _row(page: Any, name: str) -> Any:
    return page.locator(f'tr.breaker[data-name="{name}"]')


def _open_live(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#live-text")).to_have_text("live", timeout=10_000)


def test_the_page_shows_a_trip_within_a_second(
    page: Any, redis_url: str, sync_store: redbreaker.Store
) -> None:
    from playwright.sync_api import expect

    payments = _breaker(sync_store, "payments-api")
    with DashboardProcess(redis_url) as dash:
        _open_live(page, dash.url)
        state = _row(page, "payments-api").locator(".state")
        expect(state).to_have_text("closed", timeout=10_000)
        _fail(payments, 3)
        expect(state).to_have_text("open", timeout=1000)
        # The deadline follows with the re-read breaker, and ticks down on the page.
        left = _row(page, "payments-api").locator("td").nth(6)
        expect(left).to_have_text(re.compile(r"^\d+ s$"))


def test_buttons_work_with_the_token(
    page: Any, redis_url: str, sync_store: redbreaker.Store
) -> None:
    from playwright.sync_api import expect

    search = _breaker(sync_store, "search")
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        _open_live(page, f"{dash.url}/#token={TOKEN}")
        assert "#" not in page.url  # the token left the address bar
        assert TOKEN not in page.content()
        row = _row(page, "search")
        row.click()
        page.get_by_role("button", name="Force open").click()
        expect(row.locator(".state")).to_have_text("forced_open", timeout=3000)
        assert search.snapshot().state is State.FORCED_OPEN
        page.get_by_placeholder("for … s").fill("45")
        page.get_by_role("button", name="Metrics only").click()
        expect(row.locator(".state")).to_have_text("metrics_only", timeout=3000)
        snapshot = search.snapshot()
        assert snapshot.state is State.METRICS_ONLY
        assert snapshot.forced_until_ms is not None
        page.get_by_role("button", name="Reset").click()
        expect(row.locator(".state")).to_have_text("closed", timeout=3000)
        assert search.snapshot().state is State.CLOSED
        # The history lists what the buttons did, newest first.
        history = page.locator("tr.detail table.history tr")
        expect(history.nth(1)).to_contain_text("reset")


def test_no_buttons_without_the_token(
    page: Any, redis_url: str, sync_store: redbreaker.Store
) -> None:
    from playwright.sync_api import expect

    _breaker(sync_store, "search")
    with DashboardProcess(redis_url) as dash:  # read-only server: a token changes nothing
        _open_live(page, f"{dash.url}/#token={TOKEN}")
        _row(page, "search").click()
        expect(page.locator("tr.detail").first).to_be_visible()
        expect(page.locator("button[data-action]")).to_have_count(0)
        expect(page.locator("#unlock")).to_be_hidden()


def test_a_wrong_token_is_refused_and_forgotten(
    page: Any, redis_url: str, sync_store: redbreaker.Store
) -> None:
    from playwright.sync_api import expect

    search = _breaker(sync_store, "search")
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        _open_live(page, dash.url)  # no token yet: the page offers to unlock, no buttons
        _row(page, "search").click()
        expect(page.locator("#unlock")).to_be_visible()
        expect(page.locator("button[data-action]")).to_have_count(0)
        page.locator("#token-input").fill("not-the-token")
        page.get_by_role("button", name="Unlock actions").click()
        page.get_by_role("button", name="Force open").click()
        expect(page.locator("#toast")).to_contain_text("403")
        expect(page.locator("button[data-action]")).to_have_count(0)
        assert search.snapshot().state is State.CLOSED


def test_a_hostile_name_shows_as_text(
    page: Any, redis_url: str, sync_store: redbreaker.Store
) -> None:
    from playwright.sync_api import expect

    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    hostile = _breaker(sync_store, XSS_NAME)
    with DashboardProcess(redis_url) as dash:
        _open_live(page, dash.url)
        row = _row(page, XSS_NAME)
        expect(row.locator(".name")).to_have_text(XSS_NAME)
        _fail(hostile, 3)  # its reason and history render too
        expect(row.locator(".state")).to_have_text("open", timeout=3000)
        row.click()
        expect(page.locator("tr.detail table.history")).to_contain_text("consecutive_failures")
        assert page.locator("#rows img").count() == 0
        page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert dialogs == []


def _fail_once_elsewhere(url: str, policies: dict[str, Any]) -> str:
    """In a spawned process: one failure of 'fleet'; this process's reporter identity."""
    store = redbreaker.connect(url)
    try:
        _fail(redbreaker.Breaker("fleet", store=store, **policies), 1)
        return _policies.process_identity()
    finally:
        store.close()


def _facts(page: Any, name: str) -> dict[str, str]:
    """The expanded row's details, label -> value, as the page shows them."""
    facts = page.locator(f'tr.breaker[data-name="{name}"] + tr.detail dl.facts')
    return dict(
        facts.evaluate(
            "dl => [...dl.querySelectorAll('dt')]"
            ".map(dt => [dt.textContent, dt.nextElementSibling.textContent])"
        )
    )


def test_the_fleet_policies_show_once_they_count(
    page: Any, redis_url: str, sync_store: redbreaker.Store
) -> None:
    """A retry budget of 3 retries per window (the floor alone) asked by 5 guarded calls
    of 3 attempts (3 granted, then 4 refused) and a quorum of 3 with failures from two
    processes (this one and a spawned one): the row and its details say so, live; a
    breaker without the policies shows none of it."""
    from playwright.sync_api import expect

    policies: dict[str, Any] = {
        "retry_budget": 0.0,
        "retry_budget_floor": 0.05,
        "min_reporters": 3,
        "failure_threshold": 100,
    }
    fleet = redbreaker.Breaker("fleet", store=sync_store, **policies)
    fleet.call(lambda: None)
    plain = _breaker(sync_store, "plain")
    _fail(plain, 1)
    with DashboardProcess(redis_url) as dash:
        _open_live(page, dash.url)
        row = _row(page, "fleet")
        expect(row.locator(".state")).to_have_text("closed", timeout=10_000)
        expect(row.locator(".policies")).to_have_count(0)  # nothing counted yet

        guard = fleet.guard(retry_on=ZeroDivisionError, max_attempts=3, backoff_base=0.001)
        for _ in range(5):
            with pytest.raises(ZeroDivisionError):
                guard.call(lambda: 1 / 0)
        # A reporter is a process: the second one must be a real one.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            other = pool.apply(_fail_once_elsewhere, (redis_url, policies))
        mine = _policies.process_identity()
        assert other != mine
        snapshot = fleet.snapshot()
        assert (snapshot.window_retries, snapshot.retry_budget_exhausted_count) == (3, 4)
        assert (snapshot.reporters, snapshot.state) == (2, State.CLOSED)

        # The refresh loop reads window counts every 2 s: no transition announces them.
        expect(row.locator(".policies")).to_have_text(
            "3 retries · 4 refused · 2 reporters", timeout=10_000
        )
        row.click()
        expect(page.locator("tr.detail dl.facts").first).to_be_visible()
        facts = _facts(page, "fleet")
        assert facts["retry budget"] == "3 granted in the window, 4 refused in all"
        # Who failed, newest first: the spawned process failed last.
        assert facts["failing reporters"] == f"2 processes in the window: {other}, {mine}"

        plain_row = _row(page, "plain")
        expect(plain_row.locator("td").nth(4)).to_have_text("2 (1 failed)")
        expect(plain_row.locator(".policies")).to_have_count(0)
        plain_row.click()
        plain_facts = _facts(page, "plain")
        assert "would-trips" in plain_facts  # the details did render
        assert not {"retry budget", "failing reporters"} & set(plain_facts)


def test_screenshot(page: Any, redis_url: str, sync_store: redbreaker.Store) -> None:
    from playwright.sync_api import expect

    payments = _breaker(sync_store, "payments-api")
    inventory = _breaker(sync_store, "inventory")
    _fail(inventory, 1)
    _breaker(sync_store, "search")
    _breaker(sync_store, "recommendations")
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        _open_live(page, f"{dash.url}/#token={TOKEN}")
        _fail(payments, 3)
        assert dash.act("force-open", {"name": "search", "duration": 600}, TOKEN)[0] == 200
        assert dash.act("metrics-only", {"name": "recommendations"}, TOKEN)[0] == 200
        expect(_row(page, "payments-api").locator(".state")).to_have_text("open")
        expect(_row(page, "search").locator(".state")).to_have_text("forced_open")
        _row(page, "payments-api").click()
        expect(page.locator("tr.detail table.history").first).to_be_visible()
        page.wait_for_timeout(1500)  # let the rows' flash of news fade
        ARTIFACTS.mkdir(exist_ok=True)
        target = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
