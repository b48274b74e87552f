"""Helpers for the OTA tests: test models built with onnx.helper, bundles, archives, servers.

Every model is a real ONNX graph run by ONNX Runtime; every archive is a real signed
archive (or one tampered with byte by byte, as an attacker or a broken transfer would);
the download server is a real HTTPS server with a CA made at test time.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import shutil
import ssl
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from edge_agent.inference.bundle import shipped_models_dir, write_manifest
from edge_agent.ota.archive import PackedArchive, pack_bundle
from edge_agent.ota.keys import public_key_of
from tests.pki import make_cert, new_key, write_pem

SHIPPED = shipped_models_dir() / "imu-activity" / "1.0.0"
RECORDING = shipped_models_dir() / "imu-activity" / "recordings" / "heldout.csv"
WINDOW, CHANNELS, LABELS = 20, 6, 4

# -- models ----------------------------------------------------------------------------------


def _save(nodes: list[Any], inits: list[Any], path: Path, channels: int = CHANNELS) -> Path:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["N", WINDOW, channels])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", LABELS])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _linear(
    channels: int = CHANNELS, bias: list[float] | None = None
) -> tuple[list[Any], list[Any]]:
    """windows -> flatten -> linear -> logits (fixed weights)."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((WINDOW * channels, LABELS)) * 0.05).astype(np.float32)
    b = np.asarray(bias or [0.0] * LABELS, dtype=np.float32)
    nodes = [
        helper.make_node("Flatten", ["windows"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]
    return nodes, [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]


def nan_model(path: Path) -> Path:
    """Outputs NaN for every window."""
    nodes, inits = _linear()
    nodes += [
        helper.make_node("Softmax", ["logits"], ["soft"], axis=1),
        helper.make_node("Sqrt", ["MINUS_ONE"], ["nan"]),
        helper.make_node("Add", ["soft", "nan"], ["probabilities"]),
    ]
    inits.append(numpy_helper.from_array(np.array([-1.0], dtype=np.float32), "MINUS_ONE"))
    return _save(nodes, inits, path)


def nan_on_live_data_model(path: Path, limit: float = 8.0) -> Path:
    """Finite while every |value| of a window stays under `limit` (the golden and probe
    windows are standard normal), NaN beyond: it passes staging and fails on real motion."""
    nodes, inits = _linear()
    nodes += [
        helper.make_node("Softmax", ["logits"], ["soft"], axis=1),
        helper.make_node("Abs", ["windows"], ["abs"]),
        helper.make_node("ReduceMax", ["abs"], ["peak3"], axes=[1, 2], keepdims=1),
        helper.make_node("Flatten", ["peak3"], ["peak"], axis=1),
        helper.make_node("Sub", ["LIMIT", "peak"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["root"]),
        helper.make_node("Mul", ["root", "ZERO"], ["zero_or_nan"]),
        helper.make_node("Add", ["soft", "zero_or_nan"], ["probabilities"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([limit], dtype=np.float32), "LIMIT"),
        numpy_helper.from_array(np.array([0.0], dtype=np.float32), "ZERO"),
    ]
    return _save(nodes, inits, path)


def constant_model(path: Path, label: int = 2) -> Path:
    """Says `label` for every window, whatever it sees (a collapsed model)."""
    bias = [0.0] * LABELS
    bias[label] = 50.0
    nodes, inits = _linear(bias=bias)
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    return _save(nodes, inits, path)


def untrained_model(path: Path) -> Path:
    """A linear layer with random weights: finite, varied, and wrong (a drifted model)."""
    nodes, inits = _linear()
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    return _save(nodes, inits, path)


def wrong_shape_model(path: Path) -> Path:
    """Declares windows of 3 channels; the manifest (and the streams) have 6."""
    nodes, inits = _linear(channels=3)
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    return _save(nodes, inits, path, channels=3)


def slow_model(path: Path, layers: int = 600, width: int = 512) -> Path:
    """A correct-looking model that takes tens of milliseconds per window: a long chain of
    width x width MatMul + Tanh layers."""
    rng = np.random.default_rng(3)
    w_in = (rng.standard_normal((WINDOW * CHANNELS, width)) * 0.05).astype(np.float32)
    w = (np.eye(width) * 0.9).astype(np.float32)
    w_out = (rng.standard_normal((width, LABELS)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["windows"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W_IN"], ["h0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("MatMul", [f"h{layers}", "W_OUT"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(w_in, "W_IN"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(w_out, "W_OUT"),
    ]
    return _save(nodes, inits, path)


# -- bundles ---------------------------------------------------------------------------------


def make_bundle(
    root: Path,
    version: str,
    *,
    name: str = "imu-test",
    model: Callable[[Path], Path] | None = None,
    rate_hz: float = 100.0,
    window: int = WINDOW,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """A bundle directory `root/<name>/<version>`: the shipped activity model's graph (or
    `model`) with a manifest at `rate_hz`, so emulators at that rate give 10 windows/s."""
    d = root / name / version
    d.mkdir(parents=True)
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    if model is None:
        shutil.copyfile(SHIPPED / "model_fp32.onnx", d / "model.onnx")
    else:
        model(d / "model.onnx")
    shutil.copyfile(SHIPPED / "MODEL_CARD.md", d / "MODEL_CARD.md")
    for file_name, data in (extra_files or {}).items():
        (d / file_name).write_bytes(data)
    for key in ("files", "metrics", "provenance", "preprocessing"):
        manifest.pop(key, None)
    manifest.update(name=name, version=version, model_file="model.onnx")
    manifest["input"] = {**manifest["input"], "rate_hz": rate_hz, "window": window}
    write_manifest(d, manifest)
    return d


@dataclass
class Publisher:
    """A publisher's signing key and where its archives go."""

    out: Path
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public(self) -> str:
        return public_key_of(self.key)

    def pack(self, bundle: Path, *, golden: bool = True) -> PackedArchive:
        self.out.mkdir(parents=True, exist_ok=True)
        name = f"{bundle.parent.name}-{bundle.name}.bundle.tar.gz"
        return pack_bundle(bundle, self.out / name, key=self.key, golden=golden)


def read_members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive, "r:gz") as tar:
        return [
            (m, tar.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        ]


def write_members(out: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """Write a gzip'd tar with exactly these entries (an attacker's or a buggy tool's)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    out.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return out


# -- https server ------------------------------------------------------------------------------


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """(CA cert, server cert, server key) for 127.0.0.1, as PEM files in `d`."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = new_key(), new_key()
    write_pem(d / "ca", ca_key, make_cert("ota-test-ca", ca_key, ca_key, "ota-test-ca", ca=True))
    server = make_cert("127.0.0.1", server_key, ca_key, "ota-test-ca", san=True)
    write_pem(d / "server", server_key, server)
    return d / "ca.crt", d / "server.crt", d / "server.key"


class FileServer:
    """A real HTTP(S) file server on 127.0.0.1 with Range support and misbehaviours.

    Paths: `/f/<name>` serves a file (honouring `Range: bytes=N-`); `/cut/<name>` announces
    the full length but closes after half; `/slow/<name>` trickles `slow_bps` bytes/s.
    Every request's path and Range header is logged in `requests`.
    """

    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None, slow_bps: int = 20_000):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.slow_bps = slow_bps
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                mode, _, name = self.path.lstrip("/").partition("/")
                path = outer.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and mode != "cut":
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if mode == "cut":
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                    elif mode == "slow":
                        step = max(1, outer.slow_bps // 20)
                        for i in range(0, len(body), step):
                            self.wfile.write(body[i : i + step])
                            self.wfile.flush()
                            time.sleep(0.05)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="ota-files"
        )

    def url(self, name: str, mode: str = "f") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{mode}/{name}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def serve(root: Path, tls: tuple[Path, Path] | None = None) -> Iterator[FileServer]:
    with FileServer(root, tls) as server:
        yield server
