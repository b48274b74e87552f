"""The systemd unit and `edge-agent service install|uninstall`.

The unit's keys are checked by parsing the file, on every machine. The unit as
`service install` renders it (ExecStart pointing at this interpreter) is checked
with `systemd-analyze verify` and `systemd-analyze security` (exposure ≤ 2.5): both
run offline, without systemd as PID 1, but need the systemd package; without it
the test fails and says so rather than being skipped. Installing for real needs a
running systemd, so the install is staged with `--root` into a directory: real
useradd/usermod (`--root`), real files and modes, real `systemctl --root enable`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config import load_config
from edge_agent.service.install import (
    CONFIG_FILE,
    SERVICE_USER,
    UNIT_DIR,
    UNIT_NAME,
    InstallError,
    render_unit,
    require_systemd_root,
    unit_template,
)

UNIT = Path(__file__).resolve().parent.parent / "config" / "edge-agent.service"


def cli(*args: str) -> Any:
    """`edge-agent ARGS` in this process (install steps still run real commands)."""
    return CliRunner().invoke(app, list(args))


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    assert match, value
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[match[2]]


def test_unit_file_keys() -> None:
    unit = _parse(UNIT.read_text())
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert 15 <= _seconds(svc["WatchdogSec"]) <= 30
    assert svc["Restart"] == "on-failure"
    assert _seconds(svc["RestartSec"]) >= 2
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "run --config /etc/edge-agent/edge-agent.toml" in svc["ExecStart"]
    assert svc["StateDirectory"] == svc["ConfigurationDirectory"] == "edge-agent"
    assert svc["RuntimeDirectory"] == "edge-agent"
    assert svc["User"] == svc["Group"] == SERVICE_USER
    assert set(svc["SupplementaryGroups"].split()) == {"dialout", "bluetooth"}
    assert svc["StandardOutput"] == svc["StandardError"] == "journal"
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/edge-agent",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "DevicePolicy": "closed",
    }
    assert {k: svc.get(k) for k in hardening} == hardening
    assert set(svc["RestrictAddressFamilies"].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
        "AF_BLUETOOTH",
    }
    devices = unit["Service"]["DeviceAllow"]
    assert "char-ttyUSB rw" in devices
    assert "char-ttyACM rw" in devices
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def _rendered(tmp_path: Path, groups: list[str]) -> Path:
    text, _notes = render_unit(unit_template(), [sys.executable, "-m", "edge_agent"], groups)
    path = tmp_path / UNIT_NAME
    path.write_text(text)
    return path


def test_rendered_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed to verify the unit: apt-get install systemd"
    path = _rendered(tmp_path, ["dialout"])
    verify = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert security.returncode == 0, security.stdout
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert score is not None, security.stdout
    print(f"\nsystemd-analyze security exposure: {score[1]}")
    assert float(score[1]) <= 2.5


def test_render_adapts_to_the_machine() -> None:
    text, notes = render_unit(unit_template(), ["/home/tech/venv/bin/edge-agent"], [])
    svc = _parse(text)["Service"]
    assert svc["ExecStart"] == [
        "/home/tech/venv/bin/edge-agent run --config /etc/edge-agent/edge-agent.toml"
    ]
    assert "SupplementaryGroups" not in svc
    assert svc["ProtectHome"] == ["read-only"]
    assert any("ProtectHome" in n for n in notes)
    spaced, _ = render_unit(unit_template(), ["/opt/my agent/bin/python", "-m", "edge_agent"], [])
    assert 'ExecStart="/opt/my agent/bin/python" -m edge_agent run' in spaced


def test_install_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "image"
    root.mkdir()
    done = cli("service", "install", "--dry-run", "--root", str(root))
    assert done.exit_code == 0, done.stderr
    out = done.stdout
    for needle in (
        "useradd --root",
        "create /etc/edge-agent",
        "write a starter /etc/edge-agent/edge-agent.toml",
        f"write {UNIT_DIR / UNIT_NAME}",
        f"systemctl --root={root} enable {UNIT_NAME}",
        "dry run: nothing was changed",
    ):
        assert needle in out, out
    assert list(root.iterdir()) == []
    live = cli("service", "install", "--dry-run")
    assert live.exit_code == 0
    assert "systemctl enable --now edge-agent.service" in live.stdout
    assert "systemctl daemon-reload" in live.stdout


def _seed_root(root: Path) -> None:
    """An image's /etc with the accounts a Debian base has (root, dialout)."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)


def test_staged_install_and_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "image"
    _seed_root(root)
    config = tmp_path / "site.toml"
    config.write_text('[device]\nid = "gw-42"\n[mqtt]\nhost = "broker.local"\n')
    if os.geteuid() != 0:
        done = cli("service", "install", "--root", str(root), "--config", str(config))
        assert done.exit_code == 1
        assert "needs root: run it with sudo" in done.stderr
        return
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 0\n")
    refused = cli("service", "install", "--root", str(root), "--config", str(bad))
    assert refused.exit_code == 1
    assert "mqtt.port" in refused.stderr
    assert "nothing was installed" in refused.stderr
    assert not (root / "etc/systemd").exists()

    done = cli("service", "install", "--root", str(root), "--config", str(config))
    assert done.exit_code == 0, done.stdout + done.stderr
    passwd = (root / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith(f"{SERVICE_USER}:"))
    uid, gid = int(entry.split(":")[2]), int(entry.split(":")[3])
    assert entry.endswith(":/var/lib/edge-agent:/usr/sbin/nologin")
    assert f"dialout:x:20:{SERVICE_USER}" in (root / "etc/group").read_text()
    state = (root / "var/lib/edge-agent").stat()
    assert (state.st_uid, state.st_gid, stat.S_IMODE(state.st_mode)) == (uid, gid, 0o750)
    installed = root / CONFIG_FILE.relative_to("/")
    st = installed.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640)
    assert load_config(installed, environ={}).device.id == "gw-42"
    unit = root / (UNIT_DIR / UNIT_NAME).relative_to("/")
    svc = _parse(unit.read_text())["Service"]
    assert svc["SupplementaryGroups"] == ["dialout"], "bluetooth does not exist in this image"
    wants = root / "etc/systemd/system/multi-user.target.wants" / UNIT_NAME
    assert wants.is_symlink()

    again = cli("service", "install", "--root", str(root))
    assert again.exit_code == 0, again.stderr
    assert "keep the existing /etc/edge-agent/edge-agent.toml" in again.stdout
    assert "useradd" not in again.stdout, "the user exists already"

    removed = cli("service", "uninstall", "--root", str(root))
    assert removed.exit_code == 0, removed.stderr
    assert not unit.exists()
    assert not wants.exists()
    assert installed.exists(), "config and data are kept without --purge"
    purged = cli("service", "uninstall", "--root", str(root), "--purge")
    assert purged.exit_code == 0, purged.stderr
    assert not installed.exists()
    assert not (root / "var/lib/edge-agent").exists()
    assert f"{SERVICE_USER}:" not in (root / "etc/passwd").read_text()


def test_live_install_refuses_without_root_or_systemd(tmp_path: Path) -> None:
    """Before changing anything, a live install checks it is root on a systemd host."""
    with pytest.raises(InstallError, match="needs root: run it with sudo"):
        require_systemd_root(Path("/"), euid=1000, systemd_dir=tmp_path)
    with pytest.raises(InstallError, match=r"systemd is not running.*--dry-run.*--root"):
        require_systemd_root(Path("/"), euid=0, systemd_dir=tmp_path / "absent")
    require_systemd_root(Path("/"), euid=0, systemd_dir=tmp_path)
    require_systemd_root(tmp_path, euid=0, systemd_dir=tmp_path / "absent")
