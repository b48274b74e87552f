"""TLS and mutual TLS against a real mosquitto with a CA generated at test time."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.service.doctor import check_broker, check_transport
from edge_agent.store.db import Store, enqueue
from edge_agent.sync.mqtt import MqttUplink
from edge_agent.sync.tls import load_tls
from tests.broker import Mosquitto, collector, free_port, wait_for
from tests.pki import make_cert, new_key, write_pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca_key = new_key()
    write_pem(d / "ca", ca_key, make_cert("test-ca", ca_key, ca_key, "test-ca", ca=True))
    other_key = new_key()
    write_pem(
        d / "other-ca", other_key, make_cert("other-ca", other_key, other_key, "other-ca", ca=True)
    )
    server_key = new_key()
    write_pem(
        d / "server", server_key, make_cert("localhost", server_key, ca_key, "test-ca", san=True)
    )
    client_key = new_key()
    write_pem(d / "client", client_key, make_cert("gw-tls", client_key, ca_key, "test-ca"))
    return d


class TlsBroker(Mosquitto):
    """mosquitto with a plain listener (for the test's own subscriber) and a TLS one."""

    def __init__(self, workdir: Path, pki: Path, *, require_client_cert: bool) -> None:
        super().__init__(workdir)
        self.tls_port = free_port()
        self.pki = pki
        self.require = require_client_cert

    def start(self) -> None:
        self._extra = (
            f"\nlistener {self.tls_port} 127.0.0.1\n"
            f"cafile {self.pki / 'ca.crt'}\ncertfile {self.pki / 'server.crt'}\n"
            f"keyfile {self.pki / 'server.key'}\n"
            f"require_certificate {'true' if self.require else 'false'}\n"
        )
        super().start()


@pytest.fixture(scope="module", params=[False, True], ids=["tls", "mutual-tls"])
def broker(
    request: pytest.FixtureRequest, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsBroker]:
    with TlsBroker(tmp_path_factory.mktemp("tls"), pki, require_client_cert=request.param) as b:
        yield b


def _publish_once(tmp: Path, broker: TlsBroker, mqtt: dict[str, object]) -> MqttUplink:
    config = parse_config(
        {
            "device": {"id": "gw-tls", "tenant": "t", "site": "s"},
            "mqtt": {"port": broker.tls_port, "host": "127.0.0.1", "reconnect_max_s": 0.5, **mqtt},
        },
        source="test",
        environ={},
    )
    store = Store(tmp / "tls.db", device_id="gw-tls", topic_root=config.topic_root)
    store.open()
    store.submit(enqueue("heartbeat", {"hello": "tls"})).result(5)
    uplink = MqttUplink(config, store)

    async def run() -> None:
        task = asyncio.create_task(uplink.run())
        deadline = asyncio.get_running_loop().time() + 5
        while (
            asyncio.get_running_loop().time() < deadline
            and uplink.stats.acked == 0
            and uplink.stats.connect_failures < 2
        ):
            await asyncio.sleep(0.05)
        await uplink.stop(timeout=2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(run())
    finally:
        store.close()
    return uplink


def test_verified_server_and_client_certificate(
    broker: TlsBroker, pki: Path, tmp_path: Path
) -> None:
    mqtt = {"tls": True, "require_tls": True, "ca_file": str(pki / "ca.crt")}
    if broker.require:
        mqtt |= {"cert_file": str(pki / "client.crt"), "key_file": str(pki / "client.key")}
    with collector(broker.port, "edge/t/s/gw-tls/#") as sub:
        uplink = _publish_once(tmp_path, broker, mqtt)
        assert uplink.stats.acked == 1, uplink.stats.last_error
        wait_for(lambda: sub.of("heartbeat"), 10, "heartbeat over TLS")


def test_server_signed_by_another_ca_is_refused(
    broker: TlsBroker, pki: Path, tmp_path: Path
) -> None:
    mqtt = {"tls": True, "ca_file": str(pki / "other-ca.crt")}
    if broker.require:
        mqtt |= {"cert_file": str(pki / "client.crt"), "key_file": str(pki / "client.key")}
    uplink = _publish_once(tmp_path, broker, mqtt)
    assert uplink.stats.acked == 0
    assert uplink.stats.connects == 0
    assert "CERTIFICATE_VERIFY_FAILED" in (uplink.stats.last_error or "")


def test_missing_client_certificate_is_refused_when_required(
    broker: TlsBroker, pki: Path, tmp_path: Path
) -> None:
    uplink = _publish_once(tmp_path, broker, {"tls": True, "ca_file": str(pki / "ca.crt")})
    if broker.require:
        assert uplink.stats.acked == 0
        assert uplink.stats.connects == 0
    else:
        assert uplink.stats.acked == 1


def test_require_tls_refuses_a_plaintext_config() -> None:
    with pytest.raises(ConfigError, match="require_tls"):
        parse_config({"mqtt": {"require_tls": True}}, source="t", environ={})
    with pytest.raises(ConfigError, match="both cert_file and key_file"):
        parse_config({"mqtt": {"tls": True, "cert_file": "/x.crt"}}, source="t", environ={})


def test_tls_files_that_cannot_be_loaded_are_named_not_raised(pki: Path, tmp_path: Path) -> None:
    """A missing CA file, a CA file that is no certificate, and a certificate with another
    key's file: the uplink fails with a ConfigError naming the key (its supervisor restarts
    it, so putting the file in place heals it), and doctor reports a failed check instead
    of ending with a traceback."""
    ca, crt = str(pki / "ca.crt"), str(pki / "client.crt")
    cases = [
        ("mqtt.ca_file", {"ca_file": str(tmp_path / "missing.crt")}, "No such file"),
        ("mqtt.ca_file", {"ca_file": str(pki / "client.key")}, "cannot be loaded"),
        (
            "mqtt.cert_file",
            {"ca_file": ca, "cert_file": crt, "key_file": str(pki / "other-ca.key")},
            "KEY_VALUES_MISMATCH",
        ),
    ]
    with socket.create_server(("127.0.0.1", 0)) as listener:  # doctor's TCP check passes
        port = listener.getsockname()[1]
        for key, files, why in cases:
            config = parse_config(
                {"mqtt": {"host": "127.0.0.1", "port": port, "tls": True, **files}},
                source="test",
                environ={},
            )
            with pytest.raises(ConfigError) as err:
                load_tls(config.mqtt, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            assert [i.path for i in err.value.issues] == [key]
            assert why in str(err.value)
            store = Store(tmp_path / "s.db", device_id="gw", topic_root=config.topic_root)
            store.open()
            try:
                with pytest.raises(ConfigError, match=key):
                    asyncio.run(MqttUplink(config, store).run())
            finally:
                store.close()
            broker = check_broker(config, timeout=1)
            assert (broker.status, broker.summary) == ("fail", str(err.value.issues[0]))
            assert f"edge-agent config set {key} PATH" in (broker.fix or "")
            if key == "mqtt.ca_file":
                transport = check_transport(config, timeout=1)
                assert transport.status == "fail"
                assert transport.summary.startswith(f"CA file {files['ca_file']} cannot be loaded")
