"""Model bundles: a directory `<name>/<version>/` with `manifest.json`, model file(s) and a card.

The manifest pins the sha256 and size of every file, so a bundle is verified
before a runtime ever parses the model file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import BundleError

MANIFEST = "manifest.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """Digest and size of one file of the bundle."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the file.")
    size: int = Field(ge=0, description="Size in bytes.")


class InputSpec(_Strict):
    """What the model consumes: windows of `window` samples of `channels` at `rate_hz`."""

    name: str = Field(description="Graph input name.")
    dtype: Literal["float32"] = Field(description="Element type of the input tensor.")
    rate_hz: float = Field(gt=0, description="Sample rate the model was trained at.")
    window: int = Field(ge=1, description="Samples per window.")
    hop: int = Field(ge=1, description="Samples between the starts of consecutive windows.")
    channels: list[str] = Field(min_length=1, description="Channel names, in tensor order.")
    units: dict[str, str] = Field(default_factory=dict, description="Physical unit per channel.")


class OutputSpec(_Strict):
    """What the model produces."""

    name: str = Field(description="Graph output name.")
    labels: list[str] = Field(default_factory=list, description="Class labels, in output order.")


class Manifest(_Strict):
    """manifest.json of a model bundle, format 1."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal[1] = Field(description="Manifest format version.")
    name: str = Field(pattern=_SAFE_NAME.pattern, description="Model name.")
    version: str = Field(pattern=_SAFE_NAME.pattern, description="Model version.")
    task: Literal["classification", "anomaly", "embedding"] = Field(description="Kind of output.")
    runtime: str = Field(description="Runtime backend that runs `model_file` (onnx, litert).")
    model_file: str = Field(description="File the runtime loads.")
    files: dict[str, FileEntry] = Field(description="Every file of the bundle but the manifest.")
    input: InputSpec = Field(description="Input contract.")
    output: OutputSpec = Field(description="Output contract.")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        """The file the runtime loads."""
        return self.path / self.manifest.model_file

    @property
    def ref(self) -> str:
        """`name@version`, how results and logs name the model."""
        return f"{self.manifest.name}@{self.manifest.version}"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: Path, *, verify: bool = True) -> Bundle:
    """Read and (by default) verify a bundle directory.

    Raises:
        BundleError: the manifest is missing or invalid, a file is missing,
            has the wrong size or the wrong digest, or escapes the bundle.
    """
    label = str(path)
    manifest_path = path / MANIFEST
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BundleError(label, f"no {MANIFEST} (is this a bundle directory?)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(label, f"{MANIFEST} unreadable: {err}") from err
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise BundleError(label, f"{MANIFEST} invalid: {problems}") from err
    if manifest.model_file not in manifest.files:
        raise BundleError(label, f"model_file {manifest.model_file!r} is not listed in files")
    if verify:
        for name, entry in manifest.files.items():
            if not _SAFE_NAME.match(name) or "/" in name:
                raise BundleError(label, f"file name {name!r} is not a plain file name")
            file_path = path / name
            if not file_path.is_file() or file_path.is_symlink():
                raise BundleError(label, f"{name} is missing (reinstall the bundle)")
            size = file_path.stat().st_size
            if size != entry.size:
                raise BundleError(label, f"{name} is {size} bytes, manifest says {entry.size}")
            if file_sha256(file_path) != entry.sha256:
                raise BundleError(label, f"{name} does not match its sha256 (tampered or corrupt)")
    return Bundle(path=path, manifest=manifest)


def is_safe_name(text: str) -> bool:
    """Whether `text` may be a model name, a version or a bundle file name."""
    return bool(_SAFE_NAME.match(text))


def shipped_models_dir() -> Path:
    """The bundles shipped with edge-agent (source checkout or installed wheel)."""
    package_dir = Path(__file__).resolve().parent.parent
    installed = package_dir / "bundled_models"
    if installed.is_dir():
        return installed
    return package_dir.parent / "models"


def shipped_recording() -> Path:
    """What emulated sensors play by default: the default model's recording of a person it
    never saw (a trimmed UCI HAPT experiment, attributed in the recording's README)."""
    return shipped_models_dir() / "imu-posture" / "recordings" / "hapt-user02.csv"


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", version))


def find_bundle(ref: str, search: list[Path]) -> Bundle:
    """Resolve `name` (highest version) or `name@version` along the search path.

    Raises:
        BundleError: no such bundle in any search directory.
    """
    name, _, version = ref.partition("@")
    if not _SAFE_NAME.match(name) or (version and not _SAFE_NAME.match(version)):
        raise BundleError(ref, "a model reference is 'name' or 'name@version'")
    for base in search:
        model_dir = base / name
        if not model_dir.is_dir():
            continue
        if version:
            candidate = model_dir / version
            if (candidate / MANIFEST).is_file():
                return load_bundle(candidate)
            continue
        versions = sorted(
            (p.name for p in model_dir.iterdir() if (p / MANIFEST).is_file()),
            key=_version_key,
        )
        if versions:
            return load_bundle(model_dir / versions[-1])
    where = ", ".join(str(p) for p in search) or "(no directories)"
    raise BundleError(ref, f"not found in {where}; check `models.dirs` and the sensor's `models`")


def file_entry(path: Path) -> dict[str, str | int]:
    """The `files` entry of one file: its sha256 and size."""
    return {"sha256": file_sha256(path), "size": path.stat().st_size}


def write_manifest(directory: Path, manifest: dict[str, object]) -> Bundle:
    """Write `manifest.json` for a bundle directory, hashing every other file in it.

    The `files` key is filled in here, so it always matches what is on disk; the result
    is validated and loaded back exactly as the daemon would load it.

    Raises:
        BundleError: the manifest is invalid or the directory holds something that is not
            a plain file.
    """
    files = sorted(p for p in directory.iterdir() if p.name != MANIFEST)
    odd = [p.name for p in files if not p.is_file() or p.is_symlink()]
    if odd:
        raise BundleError(str(directory), f"not plain files: {odd}")
    body = {**manifest, "files": {p.name: file_entry(p) for p in files}}
    (directory / MANIFEST).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return load_bundle(directory)
