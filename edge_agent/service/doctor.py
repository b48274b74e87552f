"""`edge-agent doctor`: what a technician on site checks, each with the fix.

Every check returns pass, warn or fail, one line saying what it found, and for
anything short of pass the command or setting that fixes it. Checks only read:
the database is opened read-only, the broker gets a connection under its own
client id (never the daemon's, which would knock the daemon off), models are
loaded into a throw-away runtime.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import grp
import os
import pwd
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError, ConfigError, EdgeAgentError
from edge_agent.sync.hosts import Node
from edge_agent.sync.tls import load_tls

Status = Literal["pass", "warn", "fail"]
RANK: dict[str, int] = {"pass": 0, "warn": 1, "fail": 2}
CERT_WARN_DAYS = 30


@dataclass
class Check:
    """The outcome of one check.

    Attributes:
        name: Short name ("serial", "database", ...).
        status: pass, warn or fail.
        summary: What was found, in one line.
        fix: What to do about it (None when it passed).
    """

    name: str
    status: Status
    summary: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for `doctor --json`."""
        return asdict(self)


def worst(checks: Iterable[Check]) -> Status:
    """The most severe status among `checks` (pass when there are none)."""
    result: Status = "pass"
    for check in checks:
        if RANK[check.status] > RANK[result]:
            result = check.status
    return result


def exit_code(status: Status) -> int:
    """0 when everything passed, 1 for warnings, 2 for failures."""
    return RANK[status]


@dataclass
class Account:
    """The user whose access is checked (the technician, or the service user)."""

    name: str
    uid: int
    gids: set[int] = field(default_factory=set)

    @classmethod
    def current(cls) -> Account:
        """The user running `doctor`."""
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, {os.getegid(), *os.getgroups()})

    @classmethod
    def named(cls, name: str) -> Account:
        """A user from the password database, with every group it belongs to.

        Raises:
            KeyError: no such user.
        """
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, set(os.getgrouplist(name, entry.pw_gid)))

    def can_read_write(self, st: os.stat_result) -> bool:
        """Whether this user may open a file with this owner and mode for reading and writing."""
        if self.uid == 0:
            return True
        mode = st.st_mode
        if st.st_uid == self.uid:
            return mode & 0o600 == 0o600
        if st.st_gid in self.gids:
            return mode & 0o060 == 0o060
        return mode & 0o006 == 0o006


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- serial ------------------------------------------------------------------------------------


def check_serial(config: AgentConfig, account: Account) -> Check:
    """Every serial sensor's port exists and `account` may read and write it."""
    sensors = [s for s in config.sensors if s.link == "serial" and s.enabled]
    if not sensors:
        return Check("serial", "pass", "no serial sensors configured")
    problems: list[tuple[str, str]] = []
    fine: list[str] = []
    for s in sensors:
        port = Path(getattr(s, "port", ""))
        try:
            st = port.stat()
        except FileNotFoundError:
            problems.append(
                (
                    f"{s.name}: {port} does not exist",
                    f"check the cable and `ls -l /dev/serial/by-id/`, then set the port of "
                    f"sensor {s.name} (`sensors` in the config)",
                )
            )
            continue
        except PermissionError as err:
            problems.append((f"{s.name}: cannot look at {port}: {err}", "run doctor with sudo"))
            continue
        if not stat.S_ISCHR(st.st_mode):
            problems.append(
                (f"{s.name}: {port} is not a character device", "point it at a tty device")
            )
            continue
        if account.can_read_write(st):
            fine.append(f"{s.name} {port}")
            continue
        group = _group_name(st.st_gid)
        problems.append(
            (
                f"{s.name}: {account.name} cannot read and write {port} "
                f"({_user_name(st.st_uid)}:{group}, mode {stat.S_IMODE(st.st_mode):04o})",
                f"sudo usermod -aG {group} {account.name} (then log in again; the service "
                f"unit adds dialout by itself)",
            )
        )
    if problems:
        return Check(
            "serial",
            "fail",
            "; ".join(p for p, _ in problems),
            " | ".join(dict.fromkeys(f for _, f in problems)),
        )
    return Check("serial", "pass", f"read/write for {account.name}: {', '.join(fine)}")


# -- Bluetooth ---------------------------------------------------------------------------------


def check_bluetooth(
    config: AgentConfig,
    *,
    sysfs: Path = Path("/sys"),
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
) -> Check:
    """BlueZ is installed and an adapter is present, unblocked and powered (BLE sensors only)."""
    sensors = [s for s in config.sensors if s.link == "ble" and s.enabled]
    if not sensors:
        return Check("bluetooth", "pass", "no BLE sensors configured")
    adapters = sorted(p.name for p in (sysfs / "class" / "bluetooth").glob("hci*"))
    if not adapters:
        return Check(
            "bluetooth",
            "fail",
            f"{len(sensors)} BLE sensor(s) configured but no Bluetooth adapter (hci*) found",
            "plug in or enable the adapter (dmesg | grep -i bluetooth; on a Pi check "
            "dtoverlay and `rfkill list`)",
        )
    for rfkill in sorted((sysfs / "class" / "rfkill").glob("rfkill*")):
        try:
            if (rfkill / "type").read_text().strip() != "bluetooth":
                continue
            if (rfkill / "hard").read_text().strip() == "1":
                return Check(
                    "bluetooth",
                    "fail",
                    f"{rfkill.name}: Bluetooth is hard-blocked",
                    "flip the radio switch / enable Bluetooth in the firmware settings",
                )
            if (rfkill / "soft").read_text().strip() == "1":
                return Check(
                    "bluetooth",
                    "fail",
                    f"{rfkill.name}: Bluetooth is soft-blocked",
                    "sudo rfkill unblock bluetooth",
                )
        except OSError:
            continue
    if shutil.which("bluetoothctl") is None:
        return Check(
            "bluetooth",
            "fail",
            f"adapter {', '.join(adapters)} present but BlueZ is not installed",
            "sudo apt install bluez && sudo systemctl enable --now bluetooth",
        )
    runner = run or _run
    try:
        shown = runner(["bluetoothctl", "show"])
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check(
            "bluetooth", "fail", f"bluetoothctl failed: {err}", "sudo systemctl restart bluetooth"
        )
    text = shown.stdout + shown.stderr
    if "Powered: yes" in text:
        return Check("bluetooth", "pass", f"BlueZ running, adapter {adapters[0]} powered")
    if "Powered: no" in text:
        return Check(
            "bluetooth", "fail", f"adapter {adapters[0]} is powered off", "bluetoothctl power on"
        )
    return Check(
        "bluetooth",
        "fail",
        f"BlueZ does not answer: {text.strip()[:120] or 'no output'}",
        "sudo systemctl enable --now bluetooth",
    )


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)


# -- broker and TLS ----------------------------------------------------------------------------


@dataclass
class TlsSettings:
    """What the doctor needs to know about the broker's TLS (the mqtt section's keys)."""

    enabled: bool
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def tls_settings(config: AgentConfig) -> TlsSettings:
    """TLS settings of the mqtt section."""
    mqtt = config.mqtt
    return TlsSettings(mqtt.tls, mqtt.ca_file, mqtt.cert_file, mqtt.key_file)


def cert_not_after(pem: str) -> dt.datetime:
    """The expiry (notAfter) of the first certificate in a PEM text.

    Raises:
        ValueError: no certificate, or not the DER layout of an X.509 certificate.
    """
    der = ssl.PEM_cert_to_DER_cert(pem)
    # Certificate ::= SEQ { tbsCertificate SEQ { [0] version?, serial, sigAlg, issuer,
    # validity SEQ { notBefore, notAfter }, ... } ... }
    _, body, _ = _tlv(der, 0)
    _, tbs, _ = _tlv(der, body)
    pos = tbs
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:  # explicit version
        pos = end
    for _ in range(3):  # serial, signature algorithm, issuer
        _, _, pos = _tlv(der, pos)
    _, validity, _ = _tlv(der, pos)
    _, _, after_start = _tlv(der, validity)
    tag, value, end = _tlv(der, after_start)
    text = der[value:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("certificate validity is not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `pos`."""
    if pos + 2 > len(der):
        raise ValueError("truncated certificate")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated certificate")
    return tag, pos, pos + length


def _days_left(not_after: dt.datetime, now: dt.datetime | None) -> float:
    now = now or dt.datetime.now(dt.UTC)
    return (not_after - now).total_seconds() / 86400


def check_tls(
    host: str,
    port: int,
    ca_file: Path | None,
    cert_file: Path | None = None,
    *,
    timeout: float = 5.0,
    now: dt.datetime | None = None,
) -> Check:
    """The broker's certificate verifies against `ca_file` and is not about to expire;
    so is the client certificate when one is configured."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except OSError as err:  # ssl.SSLError is an OSError
        return Check(
            "tls",
            "fail",
            f"CA file {ca_file} cannot be loaded: {err}",
            "point mqtt.ca_file at the PEM file of the CA that signed the broker's certificate",
        )
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as err:
        return Check(
            "tls",
            "fail",
            f"broker certificate of {host}:{port} does not verify: {err.verify_message}",
            "renew the broker certificate, or point the CA file at the CA that signed it",
        )
    except (OSError, ssl.SSLError) as err:
        return Check(
            "tls",
            "fail",
            f"TLS handshake with {host}:{port} failed: {err}",
            "check the broker's TLS port and the CA file",
        )
    if der is None:
        return Check("tls", "fail", f"{host}:{port} sent no certificate", "check the broker")
    notes: list[tuple[str, float]] = []
    server_after = cert_not_after(ssl.DER_cert_to_PEM_cert(der))
    notes.append(("broker certificate", _days_left(server_after, now)))
    if cert_file is not None:
        try:
            client_after = cert_not_after(cert_file.read_text(encoding="ascii"))
        except (OSError, ValueError) as err:
            return Check(
                "tls", "fail", f"client certificate {cert_file}: {err}", "install a valid one"
            )
        notes.append((f"client certificate {cert_file.name}", _days_left(client_after, now)))
    summary = ", ".join(f"{what} expires in {days:.0f} days" for what, days in notes)
    shortest = min(days for _, days in notes)
    if shortest < 0:
        return Check("tls", "fail", summary, "renew the expired certificate now")
    if shortest < CERT_WARN_DAYS:
        return Check("tls", "warn", summary, "renew the certificate before it expires")
    return Check("tls", "pass", summary)


@dataclass
class _Attempt:
    """What one MQTT CONNECT got: a CONNACK's reason, or the connection closed without one."""

    reason: Any = None  # the CONNACK's reason code; None when none came
    closed: bool = False

    @property
    def version_refused(self) -> bool:
        if self.reason is not None:
            return getattr(self.reason, "value", None) == 0x84  # Unsupported protocol version
        return self.closed


def _mqtt_attempt(
    config: AgentConfig, version: str, timeout: float, node: Node
) -> Check | _Attempt:
    """One CONNECT to `node` with `version` and the configured credentials and TLS."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    cfg = config.mqtt
    where = str(node)
    protocol = MQTTProtocolVersion.MQTTv5 if version == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        # One id per node: a cluster knows a client id cluster-wide, and the nodes are
        # checked at the same time.
        client_id=f"{config.client_id}-doctor-{os.getpid()}-{node.port}-{node.host}"[:128],
        protocol=protocol,
    )
    if cfg.username:
        try:
            password = cfg.secret()
        except ConfigError as err:
            return Check("broker", "fail", str(err), "fix mqtt.password_file or its permissions")
        client.username_pw_set(cfg.username, password)
    if cfg.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            load_tls(cfg, context)
        except ConfigError as err:
            issue = err.issues[0]
            return Check(
                "broker",
                "fail",
                str(issue),
                f"put the file in place, or `edge-agent config set {issue.path} PATH`",
            )
        client.tls_set_context(context)
    answered = threading.Event()
    attempt = _Attempt()

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        attempt.reason = rc
        answered.set()

    def on_disconnect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if attempt.reason is None:
            attempt.closed = True
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(node.host, node.port, keepalive=10)
        client.loop_start()
        answered.wait(timeout)
    except (OSError, ssl.SSLError, ValueError) as err:
        return Check("broker", "fail", f"MQTT connect to {where} failed: {err}", "check the broker")
    finally:
        client.disconnect()
        client.loop_stop()
    return attempt


def _why(attempt: _Attempt) -> str:
    return "closed without a CONNACK" if attempt.reason is None else str(attempt.reason)


def check_broker(config: AgentConfig, *, timeout: float = 5.0) -> Check:
    """The broker accepts an MQTT connection with the configured credentials and version.

    With `mqtt.protocol = "auto"` a broker that refuses MQTT 5 is asked for 3.1.1, as the
    daemon does; a fixed version it refuses gets the setting that would work as the fix.
    With several nodes (`mqtt.hosts`) every node is checked, at the same time, and the
    summary says which accept a session: a warning while at least one does.
    """
    nodes = config.mqtt.nodes()
    if len(nodes) == 1:
        return _check_node(config, nodes[0], timeout)
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        checks = list(pool.map(lambda node: _check_node(config, node, timeout), nodes))
    good = [str(n) for n, c in zip(nodes, checks, strict=True) if c.status == "pass"]
    bad = [c for c in checks if c.status != "pass"]
    summary = f"{len(good)} of {len(nodes)} nodes accept a session" + (
        f" ({', '.join(good)})" if good else ""
    )
    if not bad:
        return Check("broker", "pass", f"{summary}: " + "; ".join(c.summary for c in checks))
    summary += "; " + "; ".join(c.summary for c in bad)
    fix = bad[0].fix or "check the nodes above"
    if good:
        return Check(
            "broker",
            "warn",
            summary,
            f"{fix} (the gateway uses the nodes that answer; one fewer node to fail over to)",
        )
    return Check("broker", "fail", summary, fix)


def _check_node(config: AgentConfig, node: Node, timeout: float) -> Check:
    """`check_broker` for one node."""
    cfg = config.mqtt
    where = str(node)
    try:
        socket.create_connection((node.host, node.port), timeout=timeout).close()
    except OSError as err:
        setting = "mqtt.hosts" if cfg.hosts else "mqtt.host / mqtt.port"
        return Check(
            "broker",
            "fail",
            f"cannot reach {where}: {err}",
            f"check {setting}, the network and the firewall; the daemon keeps "
            "everything in its outbox meanwhile",
        )
    version = "3.1.1" if cfg.protocol == "3.1.1" else "5"
    attempt = _mqtt_attempt(config, version, timeout, node)
    if isinstance(attempt, Check):
        return attempt
    fell_back = ""
    if attempt.version_refused and cfg.protocol == "auto":
        first = attempt
        second = _mqtt_attempt(config, "3.1.1", timeout, node)
        if isinstance(second, Check):
            return second
        if second.version_refused:
            return Check(
                "broker",
                "fail",
                f"{where} refused MQTT 5 ({_why(first)}) and 3.1.1 ({_why(second)})",
                "is mqtt.port the broker's MQTT listener?",
            )
        version, attempt = "3.1.1", second
        fell_back = (
            f' (it refused MQTT 5: {_why(first)}; mqtt.protocol = "auto" uses 3.1.1 with it, '
            "see docs/mqtt.md for what degrades)"
        )
    elif attempt.version_refused:
        other = "3.1.1" if version == "5" else "5"
        return Check(
            "broker",
            "fail",
            f"{where} refused MQTT {version}: {_why(attempt)}",
            f'set mqtt.protocol = "{other}" (or "auto")',
        )
    if attempt.reason is None:
        return Check(
            "broker",
            "fail",
            f"{where} accepts TCP but sent no CONNACK within {timeout:.0f} s",
            "is it an MQTT port? (TLS ports need TLS configured)",
        )
    if getattr(attempt.reason, "is_failure", False):
        return Check(
            "broker",
            "fail",
            f"{where} refused the connection: {attempt.reason}",
            "check mqtt.username and the password (EDGE_AGENT_MQTT__PASSWORD) and the "
            "broker's ACL for this client",
        )
    return Check("broker", "pass", f"{where} accepted an MQTT {version} connection{fell_back}")


def check_broker_quirks(config: AgentConfig) -> Check:
    """The ids, topics and sizes fit what the configured broker accepts (docs/brokers.md):
    a failure when `mqtt.broker` names a broker that refuses them, a warning naming the
    brokers that would when it is "generic"."""
    from edge_agent.brokers import BROKER_NAMES, broker_quirks

    quirks = broker_quirks(config)
    broker = config.mqtt.broker
    if not quirks:
        if broker == "generic":
            return Check("compat", "pass", "ids, topics and sizes fit every broker known here")
        return Check("compat", "pass", f"ids, topics and sizes fit {BROKER_NAMES[broker]}")
    summary = "; ".join(
        f"{q.broker_name} refuses or mangles {q.setting}: {q.short or q.problem}" for q in quirks
    )
    fix = " | ".join(dict.fromkeys(f"for {q.broker_name}: use {q.fix}" for q in quirks))
    if broker == "generic":
        return Check("compat", "warn", summary, fix + " (or set mqtt.broker to yours)")
    return Check("compat", "fail", summary, fix)


def check_transport(config: AgentConfig, *, timeout: float = 5.0) -> Check:
    """TLS certificate health when TLS is configured; a warning for plaintext to a remote host."""
    tls = tls_settings(config)
    nodes = config.mqtt.nodes()
    if tls.enabled:
        checks = [
            check_tls(n.host, n.port, tls.ca_file, tls.cert_file, timeout=timeout) for n in nodes
        ]
        return max(checks, key=lambda c: RANK[c.status])
    remote = [n.host for n in nodes if n.host not in {"127.0.0.1", "::1", "localhost"}]
    if not remote:
        return Check("tls", "pass", "local broker without TLS")
    return Check(
        "tls",
        "warn",
        f"plaintext MQTT to {', '.join(remote)}: credentials and telemetry travel unencrypted",
        "enable TLS on the broker and in the mqtt section",
    )


# -- clock, disk -------------------------------------------------------------------------------


class _Timex(ctypes.Structure):
    # The leading fields of `struct timex` are the same on every Linux ABI we run on;
    # the rest is room the kernel writes into.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 512),
    )


TIME_ERROR = 5
STA_UNSYNC = 0x0040


def kernel_clock_synced() -> tuple[bool, float]:
    """(synchronised, maximum error in seconds) from the kernel's adjtimex (read-only).

    Raises:
        OSError: adjtimex is not available.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    synced = state != TIME_ERROR and not timex.status & STA_UNSYNC
    return synced, timex.maxerror / 1e6


def check_clock(
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
) -> Check:
    """The system clock is synchronised (timestamps of every result depend on it)."""
    fix = (
        "sudo timedatectl set-ntp true, and let the gateway reach an NTP server "
        "(udp/123); results stay ordered by sequence numbers meanwhile"
    )
    runner = run or _run
    try:
        shown = runner(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
        answer = shown.stdout.strip() if shown.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        answer = ""
    if answer == "yes":
        return Check("clock", "pass", "synchronised (timedatectl)")
    if answer == "no":
        return Check("clock", "warn", "not synchronised (timedatectl)", fix)
    try:
        synced, max_error = kernel_clock_synced()
    except OSError as err:
        return Check("clock", "warn", f"cannot tell: {err}", fix)
    if synced:
        return Check("clock", "pass", f"synchronised (kernel, max error {max_error:.3f} s)")
    return Check("clock", "warn", f"not synchronised (kernel, max error {max_error:.1f} s)", fix)


def check_disk(
    path: Path, *, fail_below: int = 100 << 20, warn_below: int = 1 << 30, fail_pct: float = 2.0
) -> Check:
    """Free space where the database lives."""
    where = path.absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    pct = 100.0 * usage.free / usage.total if usage.total else 0.0
    summary = (
        f"{usage.free / 1e9:.2f} GB free of {usage.total / 1e9:.1f} GB ({pct:.0f}%) at {where}"
    )
    fix = "free space on that partition (old logs: journalctl --vacuum-size=100M)"
    if usage.free < fail_below or pct < fail_pct:
        return Check("disk", "fail", summary, fix + "; the store stops accepting writes when full")
    if usage.free < warn_below or pct < 5 * fail_pct:
        return Check("disk", "warn", summary, fix)
    return Check("disk", "pass", summary)


# -- database, models, daemon ------------------------------------------------------------------


def check_database(path: Path) -> Check:
    """`PRAGMA integrity_check` on a read-only connection."""
    from edge_agent.store.schema import SCHEMA_VERSION

    if not path.exists():
        return Check(
            "database",
            "warn",
            f"{path} does not exist yet",
            "start the daemon once; it creates the database (check storage.path)",
        )
    if not path.is_file():
        return Check(
            "database",
            "fail",
            f"{path} is {'a directory' if path.is_dir() else 'not a regular file'}, not a database",
            "point storage.path at the database file, e.g. "
            f"`edge-agent config set storage.path {path / 'edge-agent.db'}`",
        )
    fix = (
        "stop the service, move the file aside (mv edge-agent.db edge-agent.db.corrupt), "
        "start it again; recover rows from the old file with `sqlite3 FILE .recover`"
    )
    # Read-only, and never creating files: a -wal/-shm made by doctor running as root would
    # lock the service user out of its own database. Without a -wal (daemon stopped) the
    # file alone is the whole database, so it can be read as immutable.
    wal = path.with_name(path.name + "-wal")
    query = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?{query}", uri=True, timeout=5.0)
    except sqlite3.Error as err:
        return Check("database", "fail", f"cannot open {path}: {err}", "run doctor with sudo")
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check(5)").fetchall()]
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as err:
        if "readonly" in str(err) or "unable to open" in str(err):
            return Check("database", "fail", f"cannot read {path}: {err}", "run doctor with sudo")
        return Check("database", "fail", f"{path} is damaged: {err}", fix)
    finally:
        conn.close()
    if rows != ["ok"]:
        found = "; ".join(" ".join(r.split()) for r in rows)
        return Check("database", "fail", f"{path} is damaged: {found}", fix)
    if version > SCHEMA_VERSION:  # the daemon refuses to start on it
        return Check(
            "database",
            "fail",
            f"{path}: schema {version} is newer than this edge-agent supports ({SCHEMA_VERSION})",
            "upgrade edge-agent to the version that wrote it, or point storage.path elsewhere",
        )
    return Check("database", "pass", f"{path}: integrity ok ({tables[0]} tables)")


def check_models(config: AgentConfig) -> Check:
    """Every model the sensors use verifies against its manifest and loads in its runtime."""
    from edge_agent.inference.bundle import find_bundle, shipped_models_dir
    from edge_agent.inference.runtime import open_runtime

    refs = sorted({ref for s in config.sensors if s.enabled for ref in s.models})
    if not refs:
        return Check("models", "warn", "no sensor runs a model", "add `models` to a sensor")
    search = [*config.models.dirs, shipped_models_dir()]
    good: list[str] = []
    bad: list[str] = []
    for ref in refs:
        try:
            bundle = find_bundle(ref, search)
            open_runtime(bundle).close()
        except (BundleError, EdgeAgentError) as err:
            bad.append(str(err))
            continue
        good.append(bundle.ref)
    if bad:
        return Check(
            "models",
            "fail",
            "; ".join(bad),
            "reinstall the bundle (its files must match manifest.json), or fix models.dirs "
            "and the sensors' `models`",
        )
    return Check("models", "pass", f"verified and loaded: {', '.join(good)}")


def check_daemon(socket_path: Path) -> Check:
    """Whether the daemon answers on its control socket, and whether its pipeline is healthy."""
    from edge_agent.service.control import ControlAccessDeniedError, ControlError, request

    try:
        reply = request(socket_path, "status", timeout=5.0)
    except ControlAccessDeniedError as err:
        return Check("daemon", "warn", str(err), "run doctor with sudo or join the group")
    except ControlError as err:
        return Check("daemon", "warn", str(err), "sudo systemctl start edge-agent")
    status = reply.get("status", {})
    stall = (status.get("systemd") or {}).get("stall")
    if stall:
        return Check("daemon", "fail", f"running but {stall}", "sudo systemctl restart edge-agent")
    uptime = float(status.get("uptime_s", 0))
    return Check(
        "daemon",
        "pass",
        f"running, pid {status.get('pid')}, up {uptime:.0f} s, state {status.get('state')}",
    )


def run_checks(
    config: AgentConfig,
    *,
    account: Account | None = None,
    socket_path: Path | None = None,
    sysfs: Path = Path("/sys"),
    timeout: float = 5.0,
    config_path: Path | None = None,
) -> list[Check]:
    """Every check, in the order a technician would go through them."""
    from edge_agent.service.control import control_socket_path

    who = account or Account.current()
    return [
        check_daemon(socket_path or control_socket_path(config)),
        *([check_config_guard(config_path)] if config_path is not None else []),
        check_serial(config, who),
        check_bluetooth(config, sysfs=sysfs),
        check_broker(config, timeout=timeout),
        check_broker_quirks(config),
        check_transport(config, timeout=timeout),
        check_clock(),
        check_disk(config.storage.path),
        check_database(config.storage.path),
        check_models(config),
    ]


def check_config_guard(
    path: Path, state_dirs: Iterable[Path] = (Path("/var/lib/edge-agent"),)
) -> Check:
    """Whether the daemon runs the file it was given, or a last known good copy instead.

    The guard's files are beside the config, or in the service's state directory.
    """
    from edge_agent.config_guard import GuardFiles, GuardState

    places = [GuardFiles.for_config(path), *(GuardFiles(path, d) for d in state_dirs)]
    files = next((f for f in places if f.state.exists()), places[0])
    state = GuardState.read(files.state)
    report = state.fallback
    if report is not None:
        what = "refused at start" if report.get("when") == "start" else "reverted after a reload"
        kept = f"; refused file kept as {report['refused']}" if report.get("refused") else ""
        return Check(
            "config",
            "warn",
            f"running the last known good copy {report.get('good') or files.good}: {path} was "
            f"{what} ({report.get('reason')}){kept}",
            "fix the refused file (`edge-agent config validate`), put it in place and reload",
        )
    if files.good.exists():
        return Check("config", "pass", f"runs {path}; last known good copy {files.good}")
    return Check(
        "config",
        "pass",
        f"runs {path}; no last known good copy yet (kept once the daemon reaches the broker)",
    )
