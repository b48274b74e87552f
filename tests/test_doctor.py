"""`edge-agent doctor` on a deliberately broken setup, a healthy one, and TLS certificates.

Everything checked is real: pseudo-terminals for serial ports (their owner and mode
decide), a SQLite file corrupted on purpose, a model bundle with a flipped byte, a
mosquitto with and without TLS (a CA generated at test time with openssl), the kernel's
adjtimex. Two things cannot exist here and are replaced at the narrowest boundary: a
Bluetooth adapter (an empty directory stands in for /sys) and `timedatectl` (systemd
is not PID 1), whose one line of output is supplied.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from edge_agent.config import AgentConfig, load_config
from edge_agent.inference.bundle import shipped_models_dir
from edge_agent.service.doctor import (
    Account,
    cert_not_after,
    check_broker,
    check_clock,
    check_database,
    check_disk,
    check_tls,
    check_transport,
    exit_code,
    run_checks,
    worst,
)
from edge_agent.store.db import Store, enqueue
from tests.broker import Mosquitto, free_port
from tests.daemon_proc import cli, write_config


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def pty_path() -> Iterator[str]:
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _database(path: Path) -> Path:
    # No space reserve: the checks below assert that only the database file exists.
    store = Store(path, device_id="gw", topic_root="edge/t/s/gw", reserve_bytes=0)
    store.open()
    store.submit(enqueue("heartbeat", {"n": 1})).result(5)
    store.close()
    return path


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for page in range(1, len(data) // 4096):
        data[page * 4096 : page * 4096 + 8] = b"\x0d" + b"\xff" * 7
    path.write_bytes(bytes(data))


def _tampered_models(base: Path) -> Path:
    shutil.copytree(
        shipped_models_dir() / "imu-activity" / "1.0.0", base / "imu-activity" / "1.0.0"
    )
    model = base / "imu-activity" / "1.0.0" / "model_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return base


def _broken_config(tmp_path: Path, pty: str) -> Path:
    db = _database(tmp_path / "agent.db")
    _corrupt(db)
    return write_config(
        tmp_path / "broken.toml",
        db=db,
        mqtt_port=free_port(),
        sensors=[
            {"name": "gone", "link": "serial", "port": str(tmp_path / "ttyUSB9")},
            {"name": "locked", "link": "serial", "port": pty},
            {"name": "wrist", "link": "ble", "address": "AA:BB:CC:DD:EE:FF"},
        ],
        sections={"models": {"dirs": [str(_tampered_models(tmp_path / "models"))]}},
    )


def test_broken_setup_reports_every_fault_with_its_fix(tmp_path: Path, pty_path: str) -> None:
    """A missing port, a port the technician may not open, BLE without an adapter, no
    broker, a corrupt database and a tampered model: each is a fail with a fix."""
    config = load_config(_broken_config(tmp_path, pty_path), environ={})
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "bluetooth").mkdir(parents=True)
    outsider = Account("tech", 12345, {12345})  # owns nothing, in no device group
    checks = {c.name: c for c in run_checks(config, account=outsider, sysfs=sysfs, timeout=2.0)}
    assert checks["daemon"].status == "warn"
    serial = checks["serial"]
    assert serial.status == "fail"
    assert "ttyUSB9 does not exist" in serial.summary
    assert f"tech cannot read and write {pty_path}" in serial.summary
    assert serial.fix is not None
    assert "usermod -aG" in serial.fix
    assert "by-id" in serial.fix
    assert checks["bluetooth"].status == "fail"
    assert "no Bluetooth adapter" in checks["bluetooth"].summary
    assert checks["broker"].status == "fail"
    assert "cannot reach" in checks["broker"].summary
    assert checks["database"].status == "fail"
    assert "damaged" in checks["database"].summary
    assert checks["database"].fix is not None
    assert ".recover" in checks["database"].fix
    assert checks["models"].status == "fail"
    assert "does not match its sha256" in checks["models"].summary
    for check in checks.values():
        assert (check.fix is None) == (check.status == "pass"), check
    assert worst(checks.values()) == "fail"
    assert exit_code("fail") == 2


def test_cli_exit_code_and_json_reflect_the_worst(tmp_path: Path, pty_path: str) -> None:
    config = _broken_config(tmp_path, pty_path)
    done = cli("doctor", "--json", "--timeout", "2", "--config", str(config))
    assert done.returncode == 2, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["result"] == "fail"
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert {"serial", "broker", "database", "models"} <= failed
    text = cli("doctor", "--timeout", "2", "--config", str(config))
    assert text.returncode == 2
    assert "FAIL  database" in text.stdout
    assert "fix: " in text.stdout
    unknown = cli("doctor", "--user", "no-such-user-here", "--config", str(config))
    assert unknown.returncode == 2
    assert "no user" in unknown.stderr


def test_healthy_setup_passes(broker: Mosquitto, tmp_path: Path, pty_path: str) -> None:
    db = _database(tmp_path / "agent.db")
    before = db.stat()
    config: AgentConfig = load_config(
        write_config(
            tmp_path / "ok.toml",
            db=db,
            mqtt_port=broker.port,
            sensors=[{"name": "imu", "link": "serial", "port": pty_path}],
        ),
        environ={},
    )
    checks = {c.name: c for c in run_checks(config, account=Account.current(), timeout=5.0)}
    for name in ("serial", "bluetooth", "broker", "tls", "database", "models"):
        assert checks[name].status == "pass", checks[name]
    assert "accepted an MQTT 5 connection" in checks["broker"].summary
    assert "imu-activity@1.0.0" in checks["models"].summary
    after = db.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.glob("agent.db*")) == ["agent.db"], "no files made"


def test_database_check_reads_a_live_database_without_touching_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "live.db", device_id="gw", topic_root="edge/t/s/gw")
    store.open()
    try:
        store.submit(enqueue("heartbeat", {"n": 1})).result(5)
        assert check_database(tmp_path / "live.db").status == "pass"
        store.submit(enqueue("heartbeat", {"n": 2})).result(5)
    finally:
        store.close()
    missing = check_database(tmp_path / "never.db")
    assert missing.status == "warn"
    assert "does not exist yet" in missing.summary


def test_disk_thresholds() -> None:
    here = Path.cwd() / "x.db"
    assert check_disk(here, fail_below=1, warn_below=2, fail_pct=0.0).status == "pass"
    assert check_disk(here, fail_below=1, warn_below=1 << 62, fail_pct=0.0).status == "warn"
    full = check_disk(here, fail_below=1 << 62)
    assert full.status == "fail"
    assert full.fix is not None
    assert "free space" in full.fix


def _timedatectl(text: str, code: int = 0) -> Callable[[list[str]], CompletedProcess[str]]:
    def run(cmd: list[str]) -> CompletedProcess[str]:
        return CompletedProcess(cmd, code, text, "")

    return run


def test_clock_from_timedatectl_or_the_kernel() -> None:
    assert check_clock(_timedatectl("yes\n")).status == "pass"
    unsynced = check_clock(_timedatectl("no\n"))
    assert unsynced.status == "warn"
    assert unsynced.fix is not None
    assert "set-ntp" in unsynced.fix
    # No timedatectl answer (no systemd): the kernel's own adjtimex state decides.
    kernel = check_clock(_timedatectl("", 1))
    assert kernel.status in {"pass", "warn"}
    assert "(kernel, max error" in kernel.summary


# -- TLS ---------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and broker certificates for 127.0.0.1 valid 10 and 400 days."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "800",
             "-subj", "/CN=edge test CA", cwd=d)  # fmt: skip
    _openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-days", "800",
             "-subj", "/CN=someone else", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, days in (("short", "10"), ("long", "400")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", days,
                 "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


def _tls_broker(pki: Path, name: str) -> Mosquitto:
    b = Mosquitto(pki)
    conf = pki / f"tls-{name}.conf"
    # As root, mosquitto drops to its own user, who may not read the test's private files.
    stay = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{stay}listener {b.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / f'{name}.crt'}\nkeyfile {pki / f'{name}.key'}\n"
    )
    b.start_with(conf, "TLS mosquitto")
    return b


def test_certificate_expiry_is_read_like_openssl_does(pki: Path) -> None:
    for name in ("ca", "short", "long"):
        shown = subprocess.run(
            ["openssl", "x509", "-enddate", "-noout", "-in", str(pki / f"{name}.crt")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        expected = dt.datetime.strptime(
            shown.strip().removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z"
        ).replace(tzinfo=dt.UTC)
        assert cert_not_after((pki / f"{name}.crt").read_text()) == expected
    with pytest.raises(ValueError, match="CERTIFICATE"):
        cert_not_after("not a certificate")


@pytest.mark.parametrize(("name", "status", "days"), [("long", "pass", 400), ("short", "warn", 10)])
def test_tls_broker_certificate_days_to_expiry(
    pki: Path, name: str, status: str, days: int
) -> None:
    broker = _tls_broker(pki, name)
    try:
        check = check_tls("127.0.0.1", broker.port, pki / "ca.crt", pki / "long.crt")
        assert check.status == status, check
        assert f"broker certificate expires in {days} days" in check.summary
        assert "client certificate long.crt expires in 400 days" in check.summary
        # A year on, both have expired.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=500)
        expired = check_tls("127.0.0.1", broker.port, pki / "ca.crt", now=later)
        assert expired.status == "fail"
        assert "renew" in (expired.fix or "")
        # The same through the config, as `edge-agent doctor` runs it: TLS check and an
        # MQTT connection over TLS.
        config = load_config(
            write_config(
                pki / f"tls-{name}.toml",
                db=pki / "unused.db",
                mqtt_port=broker.port,
                sensors=[],
                sections={"mqtt": {"tls": True, "ca_file": str(pki / "ca.crt")}},
            ),
            environ={},
        )
        assert check_transport(config).status == status
        assert check_broker(config).status == "pass"
        wrong_ca = check_tls("127.0.0.1", broker.port, pki / "other.crt")
        assert wrong_ca.status == "fail"
        assert "does not verify" in wrong_ca.summary
    finally:
        broker.stop()
