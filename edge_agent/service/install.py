"""`edge-agent service install|uninstall|status`: the systemd unit, its user and directories.

An installation is a list of `Step`s computed first and executed second, so
`--dry-run` prints exactly what would run. `--root DIR` stages the same files into
an image or a test directory: users are created with `useradd --root`, the unit
is enabled with `systemctl --root`, and nothing is started.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edge_agent.config import AgentConfig, load_config, render_config
from edge_agent.durable import write_atomically
from edge_agent.errors import EdgeAgentError

SERVICE_USER = "edge-agent"
UNIT_NAME = "edge-agent.service"
UNIT_DIR = Path("/etc/systemd/system")
CONFIG_DIR = Path("/etc/edge-agent")
CONFIG_FILE = CONFIG_DIR / "edge-agent.toml"
STATE_DIR = Path("/var/lib/edge-agent")
RUNTIME_DIR = Path("/run/edge-agent")
CONTROL_SOCKET = RUNTIME_DIR / "control.sock"
DATABASE = STATE_DIR / "edge-agent.db"
# Serial ports belong to dialout; BlueZ's D-Bus policy admits the bluetooth group.
DEVICE_GROUPS = ("dialout", "bluetooth")


class InstallError(EdgeAgentError):
    """The service cannot be installed or removed as asked; the message says what to do."""


@dataclass
class Step:
    """One thing an install or uninstall does.

    Attributes:
        what: What it does, in words (printed by `--dry-run` and while running).
        command: The command it runs, if it is one.
        action: The Python function it runs, if it writes files itself.
        check: Whether a failing command aborts the rest (False: report and go on).
    """

    what: str
    command: list[str] | None = None
    action: Callable[[], None] | None = None
    check: bool = True


def unit_template() -> str:
    """The unit file shipped with edge-agent (source checkout or installed wheel)."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (
        package_dir / "edge-agent.service",
        package_dir.parent / "config" / "edge-agent.service",
    ):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise InstallError("the unit file edge-agent.service is missing from this installation")


def default_exec_start() -> list[str]:
    """How systemd should start this very installation of edge-agent."""
    script = Path(sys.executable).parent / "edge-agent"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("edge-agent")
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "edge_agent"]


def _under_home(path: str) -> bool:
    resolved = Path(path).resolve()
    return any(
        resolved.is_relative_to(p) for p in (Path("/home"), Path("/root"), Path("/run/user"))
    )


def render_unit(
    template: str,
    exec_start: list[str],
    groups: list[str],
    config_file: Path = CONFIG_FILE,
) -> tuple[str, list[str]]:
    """Fill the template in for this machine.

    Returns:
        The unit text and notes for the technician (settings that had to be relaxed).
    """
    notes: list[str] = []
    lines = []
    for original in template.splitlines():
        line = original
        if line.startswith("ExecStart="):
            argv = [*exec_start, "run", "--config", str(config_file)]
            line = "ExecStart=" + " ".join(_quote(a) for a in argv)
        elif line.startswith("SupplementaryGroups="):
            line = "SupplementaryGroups=" + " ".join(groups)
            if not groups:
                line = f"# {line}  (neither dialout nor bluetooth exists here)"
        elif line.startswith("ProtectHome=") and _under_home(exec_start[0]):
            line = "ProtectHome=read-only"
            notes.append(
                f"{exec_start[0]} lives under a home directory, so ProtectHome is relaxed to "
                "read-only; install edge-agent under /opt or /usr to keep ProtectHome=yes"
            )
        lines.append(line)
    return "\n".join(lines) + "\n", notes


def _quote(arg: str) -> str:
    if not arg or any(c in arg for c in ' \t"\\$%;'):
        escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
        return f'"{escaped.replace("%", "%%")}"'
    return arg


def _in_root(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _read_db(root: Path, name: str) -> list[list[str]]:
    try:
        text = _in_root(root, Path("/etc") / name).read_text(encoding="utf-8")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def existing_groups(root: Path = Path("/")) -> set[str]:
    """Group names defined under `root`."""
    if root == Path("/"):
        return {g.gr_name for g in grp.getgrall()}
    return {fields[0] for fields in _read_db(root, "group")}


def user_ids(user: str, root: Path = Path("/")) -> tuple[int, int] | None:
    """(uid, gid) of `user` under `root`, None when it does not exist."""
    if root == Path("/"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid
    for fields in _read_db(root, "passwd"):
        if fields[0] == user and len(fields) >= 4:
            return int(fields[2]), int(fields[3])
    return None


def starter_config() -> str:
    """A first config for a fresh install: the embedded default with the service's paths."""
    cfg = AgentConfig()
    cfg.storage.path = DATABASE
    cfg.storage.synchronous = "FULL"
    cfg.service.control_socket = CONTROL_SOCKET
    cfg.logging.show_results = False
    return (
        "# edge-agent configuration, written by `edge-agent service install`.\n"
        "# Set the device identity, the broker and the sensors, check with\n"
        "# `edge-agent config validate /etc/edge-agent/edge-agent.toml`, then apply with\n"
        "# `sudo systemctl reload edge-agent`. The two emulated sensors below only prove the\n"
        '# installation works; replace them with `link = "serial"` or `"ble"` sensors.\n\n'
        + render_config(cfg)
    )


def install_steps(
    *,
    root: Path = Path("/"),
    config_source: Path | None = None,
    exec_start: list[str] | None = None,
    user: str = SERVICE_USER,
    start: bool = True,
) -> tuple[list[Step], list[str]]:
    """What `service install` does, in order, and notes for the technician.

    Raises:
        InstallError: `config_source` is invalid (nothing is done then).
    """
    staged = root != Path("/")
    systemctl = ["systemctl", *([f"--root={root}"] if staged else [])]
    root_opt = ["--root", str(root)] if staged else []
    unit_path = _in_root(root, UNIT_DIR / UNIT_NAME)
    config_path = _in_root(root, CONFIG_FILE)
    state_dir = _in_root(root, STATE_DIR)
    groups_here = existing_groups(root)
    groups = [g for g in DEVICE_GROUPS if g in groups_here]
    unit, notes = render_unit(unit_template(), exec_start or default_exec_start(), groups)
    for g in DEVICE_GROUPS:
        if g not in groups_here:
            notes.append(f"group {g} does not exist here; left out of SupplementaryGroups")

    if config_source is not None:
        try:
            load_config(config_source, environ={})
        except EdgeAgentError as err:
            raise InstallError(f"{err}\nfix the config first; nothing was installed") from err
        config_text = config_source.read_text(encoding="utf-8")
        config_what = f"install {config_source} as {CONFIG_FILE} (root:{user}, 0640)"
    elif config_path.exists():
        config_text = None
        config_what = f"keep the existing {CONFIG_FILE}"
    else:
        config_text = starter_config()
        config_what = f"write a starter {CONFIG_FILE} (root:{user}, 0640); edit it afterwards"

    steps: list[Step] = []
    if user_ids(user, root) is None:
        steps.append(
            Step(
                f"create system user and group {user} (no login, home {STATE_DIR})",
                [
                    "useradd",
                    *root_opt,
                    "--system",
                    "--user-group",
                    "--home-dir",
                    str(STATE_DIR),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    "edge-agent daemon",
                    user,
                ],
            )
        )
    if groups:
        steps.append(
            Step(
                f"add {user} to {', '.join(groups)} ("
                + ", ".join({"dialout": "serial ports", "bluetooth": "BlueZ"}[g] for g in groups)
                + ")",
                ["usermod", *root_opt, "--append", "--groups", ",".join(groups), user],
            )
        )

    def ids() -> tuple[int, int]:
        found = user_ids(user, root)
        if found is None:
            raise InstallError(f"user {user} was not created")
        return found

    def make_dirs() -> None:
        uid, gid = ids()
        config_dir = _in_root(root, CONFIG_DIR)
        config_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config_dir, 0o755)  # noqa: S103 - a directory of world-readable layout
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chown(state_dir, uid, gid)
        os.chmod(state_dir, 0o750)  # noqa: S103 - owner and its group only

    steps.append(
        Step(f"create {CONFIG_DIR} (0755) and {STATE_DIR} ({user}, 0750)", action=make_dirs)
    )

    def write_config() -> None:
        if config_text is None:
            return
        _, gid = ids()
        if config_path.exists():
            backup = config_path.with_name(config_path.name + ".previous")
            shutil.copy2(config_path, backup)
        config_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(config_path, config_text, mode=0o640, owner=(0, gid))

    steps.append(Step(config_what, action=write_config))
    steps.append(
        Step(
            f"write {UNIT_DIR / UNIT_NAME}",
            action=lambda: _write_unit(unit_path, unit),
        )
    )
    if not staged:
        steps.append(Step("reload systemd's unit files", ["systemctl", "daemon-reload"]))
    enable = [*systemctl, "enable", *(["--now"] if start and not staged else []), UNIT_NAME]
    steps.append(
        Step(
            f"enable {UNIT_NAME}" + (" and start it" if start and not staged else ""),
            enable,
        )
    )
    return steps, notes


def uninstall_steps(*, root: Path = Path("/"), purge: bool = False) -> list[Step]:
    """What `service uninstall` does: stop, disable and remove the unit (data kept unless purge)."""
    staged = root != Path("/")
    systemctl = ["systemctl", *([f"--root={root}"] if staged else [])]
    unit_path = _in_root(root, UNIT_DIR / UNIT_NAME)
    steps = [
        Step(
            f"stop and disable {UNIT_NAME}",
            [*systemctl, "disable", *([] if staged else ["--now"]), UNIT_NAME],
            check=False,
        ),
        Step(f"remove {UNIT_DIR / UNIT_NAME}", action=lambda: unit_path.unlink(missing_ok=True)),
    ]
    if not staged:
        steps.append(Step("reload systemd's unit files", ["systemctl", "daemon-reload"]))
    if purge:
        for directory in (STATE_DIR, CONFIG_DIR):
            target = _in_root(root, directory)
            steps.append(
                Step(
                    f"delete {directory} (database with unsent messages, config)",
                    action=functools.partial(shutil.rmtree, target, ignore_errors=True),
                )
            )
        steps.append(
            Step(
                f"delete user {SERVICE_USER}",
                ["userdel", *(["--root", str(root)] if staged else []), SERVICE_USER],
                check=False,
            )
        )
    return steps


def run_steps(steps: list[Step], *, dry_run: bool, out: TextIO) -> None:
    """Execute (or with `dry_run` only print) the steps in order.

    Raises:
        InstallError: a step failed; the steps before it stay done.
    """
    for i, step in enumerate(steps, 1):
        shown = f"  $ {shlex.join(step.command)}" if step.command else ""
        print(f"[{i}/{len(steps)}] {step.what}{chr(10) + shown if shown else ''}", file=out)
        if dry_run:
            continue
        if step.action is not None:
            try:
                step.action()
            except OSError as err:
                raise InstallError(f"step {i} ({step.what}) failed: {err}") from err
        if step.command is not None:
            try:
                done = subprocess.run(step.command, capture_output=True, text=True, check=False)
            except FileNotFoundError as err:
                raise InstallError(
                    f"step {i}: {step.command[0]} not found; is this a systemd machine?"
                ) from err
            if done.returncode != 0:
                detail = (done.stderr or done.stdout).strip()
                if step.check:
                    raise InstallError(f"step {i} ({step.what}) failed: {detail}")
                print(f"      (ignored: {detail})", file=out)


def require_systemd_root(
    root: Path, *, euid: int | None = None, systemd_dir: Path = Path("/run/systemd/system")
) -> None:
    """Refuse a live install that cannot work: not root, or systemd not running.

    Raises:
        InstallError: with what to do instead.
    """
    if (os.geteuid() if euid is None else euid) != 0:
        raise InstallError("installing the service needs root: run it with sudo")
    if root == Path("/") and not systemd_dir.is_dir():
        raise InstallError(
            "systemd is not running on this machine; use --dry-run to see the steps, "
            "or --root DIR to stage the files into an image"
        )


def _write_unit(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text, mode=0o644)
