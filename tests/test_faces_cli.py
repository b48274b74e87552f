"""`edge-agent faces ...` on real files: key, gallery, images, the demo model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.faces.embedder import open_embedder
from edge_agent.faces.images import encode_pnm
from edge_agent.faces.keys import read_key_file
from edge_agent.faces.synthetic import synthetic_face

runner = CliRunner()


def _setup(tmp_path: Path) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "agent.db"}"\n'
        f'[faces]\nenabled = true\nkey_file = "{tmp_path / "face.key"}"\n'
    )
    for person in range(3):
        for capture in range(3):
            image = synthetic_face(person, capture)
            (tmp_path / f"p{person}_{capture}.ppm").write_bytes(encode_pnm(image))
    (tmp_path / "p0_raw.rgb").write_bytes(synthetic_face(0, 4).tobytes())
    return config


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_enrol_list_identify_remove_audit(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    c = ["-c", str(config)]
    code, out, err = _run(
        "faces", "enroll", *c, "--id", "emp-0", "--name", "Ada", str(tmp_path / "p0_0.ppm")
    )
    assert code == 1
    assert "faces keygen" in err  # no key yet: says how to make one
    code, out, _ = _run("faces", "keygen", str(tmp_path / "face.key"))
    assert code == 0, out
    assert os.stat(tmp_path / "face.key").st_mode & 0o777 == 0o600
    for person in range(3):
        images = [str(tmp_path / f"p{person}_{c}.ppm") for c in (0, 1)]
        code, out, err = _run(
            "faces", "enroll", *c, "--id", f"emp-{person}", "--name", f"Name {person}", *images
        )
        assert code == 0, err
        assert "2 template(s) of face-embed-demo@1.0.0 enrolled" in out
    code, out, _ = _run("faces", "list", *c, "--json")
    listed = json.loads(out)
    assert [(p["id"], p["name"], p["templates"]) for p in listed] == [
        (f"emp-{i}", f"Name {i}", {"face-embed-demo@1.0.0": 2}) for i in range(3)
    ]

    code, out, _ = _run("faces", "identify", *c, "--json", str(tmp_path / "p1_2.ppm"))
    assert code == 0
    decision = json.loads(out)
    assert (decision["identity"], decision["name"]) == ("emp-1", "Name 1")
    assert decision["score"] >= decision["threshold"]
    assert decision["candidates"][0]["identity"] == "emp-1"
    code, out, _ = _run("faces", "identify", *c, "--raw", "112x112x3", str(tmp_path / "p0_raw.rgb"))
    assert code == 0
    assert out.startswith("match: emp-0 (Name 0)")
    stranger = tmp_path / "stranger.pgm"
    stranger.write_bytes(encode_pnm(synthetic_face(4242, 0)[..., 0]))
    code, out, _ = _run("faces", "identify", *c, str(stranger))
    assert code == 3
    assert out.startswith("unknown")

    # Enrolling an image that matches someone else warns about a duplicate.
    code, out, err = _run(
        "faces", "enroll", *c, "--id", "emp-9", "--name", "Dup", str(tmp_path / "p2_2.ppm")
    )
    assert code == 0
    assert "also matches emp-2" in err

    code, out, _ = _run("faces", "remove", *c, "emp-9")
    assert code == 0
    code, out, err = _run("faces", "remove", *c, "emp-9")
    assert code == 1
    assert "not enrolled" in err
    code, out, _ = _run("faces", "audit", *c, "--json")
    audit = json.loads(out)
    assert audit["broken_at"] is None
    assert [e["action"] for e in audit["entries"]] == ["enroll"] * 4 + ["remove"]
    assert all(e["actor"].startswith("cli:") for e in audit["entries"])
    code, out, _ = _run("faces", "checksum", *c, "--json")
    assert json.loads(out)["identities"] == 3

    code, out, err = _run("faces", "identify", *c, str(tmp_path / "missing.ppm"))
    assert code == 2
    assert "missing.ppm" in err


def test_rotate_key_and_calibrate(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    c = ["-c", str(config)]
    _run("faces", "keygen", str(tmp_path / "face.key"))
    for person in range(3):
        images = [str(tmp_path / f"p{person}_{c}.ppm") for c in range(3)]
        _run("faces", "enroll", *c, "--id", f"e{person}", "--name", "N", *images)
    before = read_key_file(tmp_path / "face.key")
    code, out, _ = _run("faces", "checksum", *c)
    checksum = out.split("checksum ")[1].strip()
    code, out, err = _run("faces", "rotate-key", *c)
    assert code == 0, err
    assert read_key_file(tmp_path / "face.key") != before
    assert not (tmp_path / "face.key.next").exists()
    code, out, _ = _run("faces", "checksum", *c)
    assert out.split("checksum ")[1].strip() == checksum

    code, out, err = _run("faces", "calibrate", *c, "--gallery", "--target-far", "0.1")
    assert code == 0, err
    assert "Set it with:  [faces] threshold =" in out
    assert "genuine" in out

    embedder = open_embedder("face-embed-demo")
    vectors = embedder.embed([synthetic_face(p, v) for p in range(30) for v in range(3)])
    embedder.close()
    npz = tmp_path / "labelled.npz"
    np.savez(npz, embeddings=vectors, labels=np.repeat(np.arange(30), 3))
    code, out, err = _run("faces", "calibrate", *c, "--embeddings", str(npz), "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["genuine_pairs"] == 90
    assert body["impostor_pairs"] == 90 * 89 // 2 - 90
    assert body["target_far"] == 1e-4
    assert any("rule of three" in w for w in body["warnings"])
    people = tmp_path / "people"
    for person in range(3):
        (people / f"p{person}").mkdir(parents=True)
        for capture in range(2):
            src = tmp_path / f"p{person}_{capture}.ppm"
            (people / f"p{person}" / src.name).write_bytes(src.read_bytes())
    code, out, err = _run("faces", "calibrate", *c, "--images", str(people), "--target-far", "0.2")
    assert code == 0, err
    code, out, err = _run("faces", "calibrate", *c)
    assert code == 2
    assert "exactly one" in err
