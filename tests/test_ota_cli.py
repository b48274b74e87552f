"""`edge-agent models keygen|pack|sign|verify|install|list|activate|rollback|remove` without a
daemon (the install directory is changed directly), in-process through Typer's runner; and
the face-gallery precondition of an embedding model against a real encrypted gallery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config import parse_config
from edge_agent.inference.bundle import Manifest
from edge_agent.ota.errors import UpdateRejectedError
from edge_agent.ota.manager import OtaManager
from edge_agent.ota.repository import read_state
from tests.daemon_proc import write_config
from tests.ota_support import make_bundle

runner = CliRunner()


def _run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str, Path]:
    """A config (no daemon running), a publisher key, and a source bundle dir."""
    out = _run("models", "keygen", "--out", str(tmp_path / "publisher.key"))
    public = next(line for line in out.splitlines() if line.startswith("trusted_keys"))
    key = public.split('"')[1]
    models = tmp_path / "models"
    shutil.copytree(make_bundle(tmp_path / "seed", "1.0.0"), models / "imu-test" / "1.0.0")
    config = write_config(
        tmp_path / "agent.toml",
        db=tmp_path / "agent.db",
        sensors=[{"name": "imu-0", "link": "emulated", "models": ["imu-test"]}],
        sections={"models": {"dirs": [str(models)]}, "ota": {"trusted_keys": [key]}},
    )
    return config, tmp_path / "publisher.key", key, tmp_path


def _pack(tmp: Path, key: Path, version: str) -> dict[str, object]:
    src = make_bundle(tmp / "src", version)
    out = _run("models", "pack", str(src), "--key", str(key), "--out", str(tmp / f"{version}.tgz"))
    return json.loads(out)


def test_publisher_tools(setup: tuple[Path, Path, str, Path]) -> None:
    config, key, public, tmp = setup
    packed = _pack(tmp, key, "1.1.0")
    assert (packed["model"], packed["version"]) == ("imu-test", "1.1.0")
    assert _run("models", "verify", str(packed["archive"]), "--config", str(config)).startswith(
        "imu-test@1.1.0: ok"
    )
    _run(
        "models", "verify", str(packed["archive"]), "--trusted-key", public, "--config", "/dev/null"
    )
    # Another key: refused, naming the signer; re-signed with the trusted key: accepted.
    other = tmp / "other.key"
    _run("models", "keygen", "--out", str(other))
    unsigned = _pack(tmp, other, "1.2.0")
    out = _run("models", "verify", str(unsigned["archive"]), "--config", str(config), code=2)
    assert "untrusted_key" in out
    _run("models", "sign", str(unsigned["archive"]), "--key", str(key))
    _run("models", "verify", str(unsigned["archive"]), "--config", str(config))
    _run("models", "keygen", "--out", str(other), code=2)  # never overwrites a key


def test_offline_install_activate_rollback_remove(setup: tuple[Path, Path, str, Path]) -> None:
    config, key, _, tmp = setup
    c = ("--config", str(config))
    first = _pack(tmp, key, "1.1.0")
    second = _pack(tmp, key, "1.2.0")
    out = _run("models", "install", str(first["archive"]), *c)
    assert json.loads(out[out.index("{") :])["activated"] is True
    _run("models", "install", str(second["archive"]), "--no-activate", *c)
    listed = json.loads(_run("models", "list", "--json", *c))["models"]["imu-test"]
    assert (listed["active"], listed["history"]) == ("1.1.0", ["1.0.0"])
    assert listed["installed"] == ["1.1.0", "1.2.0"]
    _run("models", "verify", "imu-test@1.2.0", *c)
    _run("models", "activate", "imu-test@1.2.0", *c)
    _run("models", "rollback", "imu-test", *c)
    state = read_state(tmp / "ota").models["imu-test"]
    assert (state.active, state.history) == ("1.1.0", ["1.0.0"])
    assert "failed:    1.2.0" in _run("models", "list", *c)
    assert "active" in _run("models", "remove", "imu-test@1.1.0", *c, code=2)
    _run("models", "remove", "imu-test@1.2.0", *c)
    assert read_state(tmp / "ota").models["imu-test"].failed == {}


async def _no_swap(*args: Any) -> NoReturn:
    raise AssertionError("the gallery check never swaps a model")


def test_an_embedding_model_waits_for_its_gallery(tmp_path: Path) -> None:
    """The gallery is a real encrypted face gallery file, handed to the manager through its
    narrow port (`face_templates`); the other ports are never called by the check."""
    from edge_agent.faces.keys import generate_key
    from edge_agent.faces.store import GalleryStore

    store = GalleryStore(tmp_path / "gallery.db", generate_key(), key_source="test")
    manager = OtaManager(
        config=lambda: parse_config({}, source="test", environ={}),
        emit=lambda *args, **kwargs: None,
        slots={},
        swap=_no_swap,
    )
    manager.face_templates = store.template_counts
    manifest = Manifest.model_validate(
        {
            "format": 1,
            "name": "face",
            "version": "2.0.0",
            "task": "embedding",
            "runtime": "onnx",
            "model_file": "m.onnx",
            "files": {"m.onnx": {"sha256": "0" * 64, "size": 1}},
            "input": {"name": "x", "dtype": "float32", "rate_hz": 1, "window": 1, "hop": 1,
                      "channels": ["c"]},
            "output": {"name": "y"},
        }
    )  # fmt: skip
    try:
        with pytest.raises(UpdateRejectedError) as err:
            manager._check_gallery(manifest)
        assert (err.value.stage, err.value.check) == ("activate", "gallery")
        assert "re-embed" in err.value.reason
        store.enroll("p1", np.ones((1, 8), dtype=np.float32), "face@2.0.0", actor="test", name="P")
        manager._check_gallery(manifest)
    finally:
        store.close()


def test_ota_config_is_described_and_checked() -> None:
    from edge_agent.config import OtaConfig, parse_config
    from edge_agent.errors import ConfigError

    assert all(f.description for f in OtaConfig.model_fields.values())
    with pytest.raises(ConfigError) as err:
        parse_config({"ota": {"trusted_keys": ["not-a-key"]}}, source="t", environ={})
    assert "trusted_keys[0] is not an ed25519 public key" in str(err.value)
