"""`edge-agent ui` in a real browser: Debian's chromium, headless, driven by Playwright with the
system browser's path (no browser download), against a running daemon with emulated sensors
and one serial sensor on a real pseudo-terminal that the test unplugs.

One browser is launched for the module and shared by every test (each gets a fresh page).
The screenshot of the page is written to `$EDGE_AGENT_TEST_ARTIFACTS` (default: the test's
temporary directory); the README's `docs/ui.png` is made this way.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from edge_agent.config import load_config
from edge_agent.daemon import Daemon, serving_in_thread
from edge_agent.ui.auth import hash_password
from edge_agent.ui.server import UiConfigError, UiOptions, UiServer, check_bind
from firmware_bridge.emulator import DeviceEmulator, SyntheticMotion
from tests.daemon_proc import write_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@dataclass
class Ui:
    """A UI server running on its own thread and loop."""

    server: UiServer
    url: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread


def start_ui(options: UiOptions) -> Ui:
    server = UiServer(options, check_bind(options))
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.run())
        except asyncio.CancelledError:
            pass
        except BaseException as err:  # surfaced below
            failure.append(err)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=serve, name="ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.listening.is_set():
        assert not failure, failure
        assert time.monotonic() < deadline, "the UI server did not start"
        time.sleep(0.01)
    return Ui(server, f"http://127.0.0.1:{server.port}/", loop, thread)


def stop_ui(ui: Ui) -> None:
    def cancel() -> None:
        for task in asyncio.all_tasks(ui.loop):
            task.cancel()

    ui.loop.call_soon_threadsafe(cancel)
    ui.thread.join(10)
    assert not ui.thread.is_alive()


@dataclass
class Gateway:
    daemon: Daemon
    emulator: DeviceEmulator
    socket: Path
    ui: Ui


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The daemon (two emulated IMUs with the default model, one pty sensor) and the page."""
    tmp = tmp_path_factory.mktemp("ui")
    by_id = tmp / "dev" / "serial" / "by-id" / "usb-Emu_IMU_0001-if00-port0"
    emulator = DeviceEmulator(SyntheticMotion(50.0, seed=3), device_id="bench", link_path=by_id)
    # A file, so the reload button re-reads this config (not the embedded default).
    path = write_config(
        tmp / "agent.toml",
        db=tmp / "agent.db",
        device="gw-ui",
        sensors=[
            {"name": "imu-0", "link": "emulated", "models": ["imu-posture"]},
            {
                "name": "imu-1",
                "link": "emulated",
                "models": ["imu-posture"],
                "start_offset_s": 100.0,
            },
            {"name": "bench", "link": "serial", "port": str(by_id), "models": []},
        ],
        sections={
            "metrics": {"enabled": False},
            "service": {"control_socket": str(tmp / "agent.sock")},
        },
    )
    config = load_config(path)
    daemon = Daemon(config, handle_signals=False, config_path=path)
    with emulator, serving_in_thread(daemon, until=lambda d: d.windows_committed > 0):
        ui = start_ui(UiOptions(control_socket=tmp / "agent.sock", port=0))
        try:
            yield Gateway(daemon, emulator, tmp / "agent.sock", ui)
        finally:
            stop_ui(ui)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


def test_the_page_shows_live_signals_and_labels(
    gateway: Gateway, page: Page, tmp_path: Path
) -> None:
    page.goto(gateway.ui.url)
    expect(page.get_by_test_id("daemon")).to_have_text("daemon connected", timeout=10_000)
    expect(page.get_by_test_id("state-imu-0")).to_have_text("streaming", timeout=10_000)
    expect(page.get_by_test_id("device")).to_contain_text("gw-ui")
    expect(page.get_by_test_id("label-imu-0")).not_to_have_text("–", timeout=10_000)
    expect(page.get_by_test_id("confidence-imu-0")).to_contain_text("%")
    expect(page.get_by_test_id("models")).to_contain_text(next(iter(gateway.daemon.slots)))
    expect(page.get_by_test_id("models")).to_contain_text(" ms")  # its time per call
    expect(page.get_by_test_id("uplink")).to_contain_text("offline")
    expect(page.get_by_test_id("uplink")).to_contain_text("oldest")  # the outbox's oldest
    expect(page.get_by_test_id("uplink")).to_contain_text("free of")  # the store's disk
    # The plot's data advances: the newest sample time shown grows.
    page.wait_for_function("() => window.edgeAgentUi.points['imu-0'] > 10", timeout=10_000)
    first = page.evaluate("() => window.edgeAgentUi.lastT['imu-0']")
    page.wait_for_function(
        f"() => window.edgeAgentUi.lastT['imu-0'] > {first} + 0.2", timeout=10_000
    )
    page.wait_for_function("() => window.edgeAgentUi.results >= 2", timeout=10_000)
    page.wait_for_timeout(300)  # one more drawn frame for the picture
    artifacts = Path(os.environ.get("EDGE_AGENT_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "ui.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_reload_button_reloads_the_daemon(gateway: Gateway, page: Page) -> None:
    seen: list[Any] = []
    unsubscribe = gateway.daemon.bus.subscribe(
        lambda e: seen.append(e) if e.kind == "agent.reloaded" else None
    )
    try:
        page.goto(gateway.ui.url)
        expect(page.get_by_test_id("daemon")).to_have_text("daemon connected", timeout=10_000)
        page.get_by_test_id("reload").click()
        expect(page.get_by_test_id("action")).to_have_text("reload: done", timeout=15_000)
        assert seen
    finally:
        unsubscribe()


def test_the_sensor_test_judges_a_live_sensor(gateway: Gateway, page: Page) -> None:
    page.goto(gateway.ui.url)
    expect(page.get_by_test_id("state-bench")).to_have_text("streaming", timeout=10_000)
    page.get_by_test_id("test-bench").click()
    expect(page.get_by_test_id("action")).to_have_text(
        re.compile(r"^bench: ok: streaming at \d+(\.\d+)? Hz, no gaps, no CRC errors$"),
        timeout=10_000,
    )


def test_a_recording_is_made_and_downloaded_as_csv(gateway: Gateway, page: Page) -> None:
    page.goto(gateway.ui.url)
    expect(page.get_by_test_id("state-imu-0")).to_have_text("streaming", timeout=10_000)
    record = page.get_by_test_id("record-imu-0")
    record.click()
    expect(record).to_have_text("Stop", timeout=5_000)
    start = time.monotonic()
    while time.monotonic() - start < 1.5:  # record for a moment of real time
        page.wait_for_timeout(100)
    record.click()
    expect(page.get_by_test_id("action")).to_contain_text("recorded", timeout=5_000)
    link = page.get_by_test_id("download-imu-0")
    expect(link).to_be_visible()
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename.startswith("imu-0-")
    lines = Path(download.path()).read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "t"
    assert "ax (g)" in header
    rows = [[float(x) for x in line.split(",")] for line in lines[1:]]
    assert len(rows) >= 20  # 1.5 s of a 50 Hz sensor, at full rate
    assert all(len(r) == len(header) for r in rows)
    times = [r[0] for r in rows]
    assert times == sorted(times)


def test_unplugging_a_sensor_shows_it_lost_within_two_seconds(gateway: Gateway, page: Page) -> None:
    page.goto(gateway.ui.url)
    badge = page.get_by_test_id("state-bench")
    expect(badge).to_have_text("streaming", timeout=10_000)
    gateway.emulator.unplug()
    try:
        unplugged = time.monotonic()
        expect(badge).to_have_text("lost", timeout=2_000)
        assert time.monotonic() - unplugged < 2.0
    finally:
        gateway.emulator.replug()
    expect(badge).to_have_text("streaming", timeout=10_000)


def test_a_cross_site_action_is_refused(gateway: Gateway) -> None:
    """No CSRF token, or a foreign Origin: 403, and nothing reaches the daemon."""
    url = gateway.ui.url + "api/reload"
    for headers in ({}, {"X-CSRF-Token": "guess", "Origin": "http://evil.example"}):
        req = urllib.request.Request(url, data=b"", method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        err.value.close()
        assert err.value.code == 403
    rebinding = urllib.request.Request(gateway.ui.url, headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(rebinding, timeout=10)
    err.value.close()
    assert err.value.code == 421


def test_a_lan_bind_needs_a_password_and_then_the_page_asks_for_it(
    browser: Browser, gateway: Gateway, tmp_path: Path
) -> None:
    with pytest.raises(UiConfigError, match="without a password"):
        check_bind(UiOptions(control_socket=gateway.socket, host="0.0.0.0", insecure_lan=True))
    with pytest.raises(UiConfigError, match="without TLS"):
        check_bind(
            UiOptions(
                control_socket=gateway.socket, host="0.0.0.0", password_hash=hash_password("x" * 8)
            )
        )
    refused = subprocess.run(
        [sys.executable, "-m", "edge_agent", "ui", "--socket", str(gateway.socket), "--host",
         "0.0.0.0", "--insecure-lan", "--password-file", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "without a password" in refused.stderr

    ui = start_ui(
        UiOptions(
            control_socket=gateway.socket,
            host="0.0.0.0",
            port=0,
            password_hash=hash_password(PASSWORD),
            insecure_lan=True,
        )
    )
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(ui.url)
        expect(page.get_by_test_id("login")).to_be_visible()
        page.fill("#password", "wrong password")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_have_text("Wrong password.")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page.get_by_test_id("state-imu-0")).to_have_text("streaming", timeout=10_000)
        # The feed needs the session too.
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(ui.url + "live", timeout=10)
        err.value.close()
        assert err.value.code == 401
    finally:
        context.close()
        stop_ui(ui)


def test_passwd_stores_a_scrypt_hash_only(tmp_path: Path) -> None:
    target = tmp_path / "ui-password"
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent", "ui", "passwd", "--stdin", "--password-file",
         str(target)],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert str(target) in out.stdout
    stored = target.read_text()
    assert stored.startswith("scrypt$")
    assert PASSWORD not in stored
    assert target.stat().st_mode & 0o777 == 0o600
    short = subprocess.run(
        [sys.executable, "-m", "edge_agent", "ui", "passwd", "--stdin", "--password-file",
         str(target)],
        input="short\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert short.returncode == 2
    assert json.dumps(stored) == json.dumps(target.read_text())  # unchanged


def test_the_optional_ui_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """config/edge-agent-ui.service verifies and is hardened (exposure at most 2.5)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed to verify the unit: apt-get install systemd"
    text = (Path(__file__).parent.parent / "config" / "edge-agent-ui.service").read_text()
    assert "--host 127.0.0.1" in text
    assert "LoadCredential=ui-password:" in text
    unit = tmp_path / "edge-agent-ui.service"
    unit.write_text(
        text.replace("/opt/edge-agent/bin/edge-agent", f"{sys.executable} -m edge_agent")
    )
    verify = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert "edge-agent-ui.service" not in verify.stderr, verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert score is not None, security.stdout
    assert float(score[1]) <= 2.5, security.stdout
