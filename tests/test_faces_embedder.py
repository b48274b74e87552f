"""The embedding contract, the shipped demo bundle (real ONNX Runtime) and image decoding."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image as PilImage

from edge_agent.errors import BundleError, RuntimeBackendError
from edge_agent.faces.demo_model import build_onnx, fit_fisherfaces, pooled_features
from edge_agent.faces.embedder import FaceEmbedder, face_spec, open_embedder
from edge_agent.faces.errors import ImageError
from edge_agent.faces.images import (
    decode_crop,
    decode_image,
    encode_pnm,
    from_raw,
    resize_bilinear,
    to_channels,
)
from edge_agent.faces.synthetic import synthetic_face
from edge_agent.inference.bundle import Bundle, load_bundle, shipped_models_dir, write_manifest
from firmware_bridge.protocol.v1 import FaceCrop, PixelFormat

DEMO = shipped_models_dir() / "face-embed-demo" / "1.0.0"


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return open_embedder("face-embed-demo")


def test_demo_bundle_honours_its_contract_and_says_it_is_not_for_production(
    embedder: FaceEmbedder,
) -> None:
    spec = embedder.spec
    assert embedder.ref == "face-embed-demo@1.0.0"
    assert (spec.layout, spec.width, spec.height, spec.color_order) == ("NCHW", 112, 112, "RGB")
    assert spec.dim == embedder.dim == 128
    assert spec.production is False
    assert spec.threshold is not None
    assert spec.threshold_far == 1e-4
    card = (DEMO / "MODEL_CARD.md").read_text()
    assert "NOT FOR PRODUCTION DECISIONS" in card
    assert f"{spec.threshold:.4f}" in card
    vectors = embedder.embed([synthetic_face(1, 0), synthetic_face(1, 3), synthetic_face(2, 0)])
    assert vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    same, other = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert same >= spec.threshold > other


def test_the_graph_computes_what_the_numpy_twin_computes(tmp_path: Path) -> None:
    images = np.array([[synthetic_face(500 + p, c) for c in range(3)] for p in range(12)])
    features = pooled_features(images.reshape(-1, 112, 112, 3)).reshape(12, 3, -1)
    mean, projection = fit_fisherfaces(features, 16)
    model = build_onnx(mean, projection, doc="test")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (images.reshape(-1, 112, 112, 3).astype(np.float32) - 127.5) / 128
    (out,) = session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
    twin = (pooled_features(images.reshape(-1, 112, 112, 3)) - mean) @ projection
    twin /= np.linalg.norm(twin, axis=1, keepdims=True)
    np.testing.assert_allclose(out, twin, atol=2e-4)


def test_colour_order_layout_and_normalisation_follow_the_manifest(
    tmp_path: Path, embedder: FaceEmbedder
) -> None:
    rgb = synthetic_face(3, 0)
    tensor = embedder.preprocess([rgb])
    assert tensor.shape == (1, 3, 112, 112)
    np.testing.assert_allclose(tensor[0, 0, 10, 20], (rgb[10, 20, 0] - 127.5) / 128)
    np.testing.assert_allclose(tensor[0, 2, 10, 20], (rgb[10, 20, 2] - 127.5) / 128)
    # A BGR, NHWC variant of the same bundle reverses channels and keeps pixels last.
    bundle = _variant(tmp_path, layout="NHWC", color_order="BGR", channels=["b", "g", "r"])
    spec = face_spec(bundle)
    assert spec.input_shape(2) == [2, 112, 112, 3]
    pixels = to_channels(resize_bilinear(rgb, 112, 112), spec.color_order)
    np.testing.assert_array_equal(pixels[..., 0], rgb[..., 2])
    grey = to_channels(resize_bilinear(rgb, 56, 56), "GRAY")
    assert grey.shape == (56, 56, 1)
    assert to_channels(resize_bilinear(rgb[..., 0], 112, 112), "RGB").shape == (112, 112, 3)


def _variant(tmp_path: Path, **face: object) -> Bundle:
    directory = tmp_path / "variant" / "1.0.0"
    directory.mkdir(parents=True)
    shutil.copy(DEMO / "model.onnx", directory / "model.onnx")
    manifest = json.loads((DEMO / "manifest.json").read_text())
    manifest.pop("files")
    manifest["name"] = "variant"
    channels = face.pop("channels", None)
    if channels is not None:
        manifest["input"]["channels"] = channels
    manifest["face"].update(face)
    return write_manifest(directory, manifest)


def test_bundles_that_break_the_contract_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"disagree with face\.color_order"):
        FaceEmbedder(_variant(tmp_path / "a", color_order="BGR"))
    with pytest.raises(BundleError, match="mean and std need 1 values"):
        FaceEmbedder(_variant(tmp_path / "b", color_order="GRAY", channels=["gray"]))
    with pytest.raises(RuntimeBackendError, match=r"manifest says \[1, 64\]"):
        FaceEmbedder(_variant(tmp_path / "c", dim=64))
    imu = load_bundle(shipped_models_dir() / "imu-activity" / "1.0.0")
    with pytest.raises(BundleError, match="needs an embedding bundle"):
        FaceEmbedder(imu)
    with pytest.raises(BundleError, match="not found"):
        open_embedder("no-such-face-model")


def test_pnm_files_decode_in_every_variant() -> None:
    rgb = synthetic_face(4, 0)
    np.testing.assert_array_equal(decode_image(encode_pnm(rgb)), rgb)
    grey = rgb[..., 1].copy()
    np.testing.assert_array_equal(decode_image(encode_pnm(grey)), grey)
    ascii_pgm = b"P2\n# a comment\n3 2\n15\n0 15 3\n6 9 12\n"
    np.testing.assert_array_equal(
        decode_image(ascii_pgm), np.array([[0, 255, 51], [102, 153, 204]], np.uint8)
    )
    sixteen = b"P5\n2 1\n65535\n" + np.array([0, 65535], ">u2").tobytes()
    np.testing.assert_array_equal(decode_image(sixteen), [[0, 255]])
    with pytest.raises(ImageError, match="truncated"):
        decode_image(encode_pnm(rgb)[:-10], "face.ppm")
    with pytest.raises(ImageError, match="not a PGM/PPM, JPEG or PNG"):
        decode_image(b"GIF89a....", "face.gif")


def test_jpeg_and_png_decode_through_pillow_and_crops_are_checked() -> None:
    rgb = synthetic_face(5, 0)
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        PilImage.fromarray(rgb).save(buffer, format=fmt, quality=95)
        decoded = decode_image(buffer.getvalue())
        assert decoded.shape == rgb.shape
        error = np.mean(np.abs(decoded.astype(int) - rgb))
        assert error < 8 if fmt == "JPEG" else error == 0  # JPEG is lossy, PNG is not
    buffer = io.BytesIO()
    PilImage.fromarray(rgb).save(buffer, format="JPEG")
    crop = FaceCrop(0, 1, PixelFormat.JPEG, 112, 112, buffer.getvalue(), 0, 0)
    assert decode_crop(crop).shape == (112, 112, 3)
    liar = FaceCrop(0, 2, PixelFormat.JPEG, 100, 112, buffer.getvalue(), 0, 0)
    with pytest.raises(ImageError, match=r"JPEG is 112×112, the frame says 100×112"):
        decode_crop(liar)
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(b"\xff\xd8\xff" + b"\x00" * 100)
    raw = FaceCrop(0, 3, PixelFormat.GRAY8, 4, 2, bytes(range(8)), 0, 0)
    np.testing.assert_array_equal(decode_crop(raw), np.arange(8).reshape(2, 4))
    with pytest.raises(ImageError, match="need 24 bytes"):
        from_raw(b"\x00" * 10, 4, 2, 3)


def test_a_litert_nhwc_bundle_embeds_like_the_onnx_one(
    tmp_path: Path, embedder: FaceEmbedder
) -> None:
    """The demo model exported to LiteRT (NHWC input) through the real LiteRT interpreter."""
    import onnx
    from onnx import numpy_helper

    from edge_agent.faces.demo_model import build_tflite

    graph = onnx.load(str(DEMO / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    directory = tmp_path / "face-embed-demo-litert" / "1.0.0"
    directory.mkdir(parents=True)
    (directory / "model.tflite").write_bytes(
        build_tflite(weights["mean_face"], weights["projection"], description="test")
    )
    manifest = json.loads((DEMO / "manifest.json").read_text())
    manifest.pop("files")
    manifest.update(name="face-embed-demo-litert", runtime="litert", model_file="model.tflite")
    manifest["face"]["layout"] = "NHWC"
    write_manifest(directory, manifest)
    litert = open_embedder("face-embed-demo-litert", [tmp_path])
    images = [synthetic_face(p, c) for p in range(3) for c in range(2)]
    np.testing.assert_allclose(litert.embed(images), embedder.embed(images), atol=1e-4)
    np.testing.assert_allclose(litert.embed(images[:1]), embedder.embed(images[:1]), atol=1e-4)
    litert.close()
    with pytest.raises(RuntimeBackendError, match="closed"):
        litert.embed(images[:1])


def test_the_embedder_is_resolved_through_the_given_finder(tmp_path: Path) -> None:
    """The daemon hands the OTA manager's resolver in, so a face model activated over the air
    (here: version 9.9.9 of the demo model in an install directory) is the one loaded."""
    shipped = shipped_models_dir() / "face-embed-demo" / "1.0.0"
    target = tmp_path / "face-embed-demo" / "9.9.9"
    shutil.copytree(shipped, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.pop("files")
    manifest["version"] = "9.9.9"
    write_manifest(target, manifest)
    asked: list[str] = []

    def find(ref: str, search: list[Path]) -> Bundle:
        asked.append(ref)
        return load_bundle(target)

    embedder = open_embedder("face-embed-demo", find=find)
    assert asked == ["face-embed-demo"]
    assert embedder.ref == "face-embed-demo@9.9.9"
