"""The daemon's face path: FACE_CROP / EMBEDDING frames → decisions → events.

The event loop only sorts frames and joins crop chunks (cheap); decoding, embedding and
matching run on one ``faces`` worker thread, and each decision comes back to the loop as
a ``face.match`` or ``face.unknown`` event carrying the score, the threshold, the latency
and the model version — never the image or the embedding.

The gallery is watched: a change committed by another process (``edge-agent faces
enroll`` while the daemon runs) is noticed within ``poll_s``; the in-memory index is
rebuilt on the worker and swapped in whole. New audit rows are published as ``face.audit``
events, so the cloud sees every enrolment and removal wherever it was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from edge_agent.errors import EdgeAgentError
from edge_agent.faces.embedder import FaceEmbedder, open_embedder
from edge_agent.faces.errors import FaceError, ModelMismatchError
from edge_agent.faces.images import decode_crop
from edge_agent.faces.index import Decision, FaceIndex
from edge_agent.faces.keys import resolve_key_source
from edge_agent.faces.store import GalleryStore, open_gallery
from edge_agent.inference.bundle import Bundle
from firmware_bridge.protocol.v1 import CropAssembler, FaceCrop, Frame, FrameType, ProtocolError

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, FacesConfig

log = logging.getLogger(__name__)

Emit = Callable[..., None]
"""``emit(kind, severity, sensor=..., **body)``: the daemon's ``_event``."""

T = TypeVar("T")

FACE_TYPES = frozenset((FrameType.FACE_CROP, FrameType.EMBEDDING))
MAX_PENDING = 16
"""Faces queued for the worker at most; more (a camera flooding the link) are dropped."""
REJECT_REPEAT_S = 60.0
"""A repeated rejection reason is published once, then counted for this long."""
AUDIT_CURSOR = "daemon_published_audit_id"


@dataclass
class FaceStats:
    """Counters of the face path (shown by :meth:`FacePipeline.health`)."""

    crops: int = 0
    embeddings: int = 0
    matches: int = 0
    unknown: int = 0
    rejected: int = 0
    dropped_busy: int = 0
    gallery_reloads: int = 0


@dataclass(frozen=True)
class FaceOutcome:
    """A decision with where its face came from (worker → loop)."""

    decision: Decision
    source: str
    embed_ms: float
    crop_id: int | None


class FacePipeline:
    """Everything the daemon needs for faces: key, gallery, model, index, worker.

    Args:
        config: The ``faces`` section.
        gallery_path: The gallery database.
        model_dirs: Extra bundle directories (``models.dirs``).
        emit: Where events go (called on the event loop).
        poll_s: How often the gallery is checked for changes by other processes.
        environ: Environment for ``$CREDENTIALS_DIRECTORY`` (tests pass their own).
    """

    def __init__(
        self,
        config: FacesConfig,
        *,
        gallery_path: Path,
        model_dirs: Sequence[Path] = (),
        emit: Emit,
        poll_s: float = 1.0,
        environ: dict[str, str] | None = None,
        find: Callable[[str, list[Path]], Bundle] | None = None,
    ) -> None:
        self.config = config
        self.find = find
        self.gallery_path = gallery_path
        self.model_dirs = list(model_dirs)
        self.emit = emit
        self.poll_s = poll_s
        self.environ = environ
        self.stats = FaceStats()
        self.store: GalleryStore | None = None
        self.embedder: FaceEmbedder | None = None
        self.index: FaceIndex | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faces")
        self._assemblers: dict[str, CropAssembler] = {}
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._version = -1
        self._rejections: dict[tuple[str, str], tuple[float, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start and stop --------------------------------------------------------------------

    def open(self) -> None:
        """Load key, gallery, model and index (blocking; run it off the loop).

        Raises:
            FaceError: No key, wrong key, unusable gallery.
            BundleError: The model bundle is missing or not a face embedding bundle.
            RuntimeBackendError: The model does not load.
        """
        source = resolve_key_source(self.config.key_file, self.config.key_credential, self.environ)
        self.store = open_gallery(self.gallery_path, source)
        self.embedder = open_embedder(self.config.model, self.model_dirs, find=self.find)
        if self.config.threshold is None and self.embedder.spec.threshold is None:
            raise FaceError(
                f"no threshold: {self.embedder.ref} suggests none; set faces.threshold to the "
                "value `edge-agent faces calibrate` gives for this deployment"
            )
        self.reload()

    @property
    def threshold(self) -> float:
        """The configured threshold, else the bundle's suggestion (checked at open)."""
        if self.config.threshold is not None:
            return self.config.threshold
        assert self.embedder is not None
        suggested = self.embedder.spec.threshold
        assert suggested is not None
        return suggested

    def reload(self) -> FaceIndex:
        """Rebuild the index from the gallery (worker thread or start-up)."""
        store, embedder = self.store, self.embedder
        assert store is not None
        assert embedder is not None
        started = time.perf_counter()
        self._version = store.data_version()
        templates = store.load_templates(embedder.ref)
        index = FaceIndex(
            embedder.ref,
            templates.identities,
            templates.owners,
            templates.vectors,
            dtype=self.config.gallery_dtype,
            dim=embedder.dim,
        )
        if templates.vectors.size and index.dim != embedder.dim:
            raise FaceError(
                f"gallery templates of {embedder.ref} have {index.dim} values, the model "
                f"produces {embedder.dim}: the gallery was written by another model build"
            )
        self.index = index
        self.stats.gallery_reloads += 1
        counts = store.template_counts()
        self._event(
            "face.gallery_loaded",
            "info",
            None,
            identities=len(index.identities),
            templates=index.size,
            model=embedder.bundle.manifest.name,
            model_version=embedder.bundle.manifest.version,
            dtype=index.dtype,
            threshold=self.threshold,
            load_ms=round((time.perf_counter() - started) * 1000, 1),
            other_model_templates={m: n for m, n in counts.items() if m != embedder.ref},
        )
        return index

    async def run(self) -> None:
        """Watch the gallery for changes by other processes and publish its audit log."""
        self._loop = asyncio.get_running_loop()
        await self._publish_audit()
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                changed = await self.call(self._changed)
                if changed:
                    await self.call(self.reload)
                await self._publish_audit()
            except EdgeAgentError as err:
                self._reject(None, "gallery", f"gallery reload failed: {err}")

    def _changed(self) -> bool:
        assert self.store is not None
        return self.store.data_version() != self._version

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the face worker thread (gallery and model are used from there)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    async def _publish_audit(self) -> None:
        store = self.store
        if store is None:
            return

        def read() -> list[dict[str, Any]]:
            cursor = int(store.get_meta(AUDIT_CURSOR) or 0)
            return [e.as_dict() for e in store.audit_log(cursor)]

        entries = await self.call(read)
        for entry in entries:
            self._event("face.audit", "info", None, **entry)
        if entries:
            last = str(entries[-1]["audit_id"])
            await self.call(lambda: store.set_meta(AUDIT_CURSOR, last))

    async def drain(self) -> None:
        """Wait until every face handed to the worker has become an event."""
        await self.call(lambda: None)  # one worker thread: earlier jobs finish first
        if self._pending:
            await self._idle.wait()

    def close(self) -> None:
        """Stop the worker and close model and gallery; safe to call twice."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self.embedder is not None:
            self.embedder.close()
        if self.store is not None:
            self.store.close()

    # -- frames (event loop) ---------------------------------------------------------------

    def take(self, stream: str, frames: list[Frame], recv_mono: float) -> list[Frame]:
        """Handle the face frames of one stream's read; return the other frames."""
        if not any(f.frame_type in FACE_TYPES for f in frames):
            return frames
        rest: list[Frame] = []
        for frame in frames:
            if frame.frame_type == FrameType.FACE_CROP:
                assembler = self._assemblers.get(stream)
                if assembler is None:
                    assembler = CropAssembler(self.config.max_crop_bytes)
                    self._assemblers[stream] = assembler
                before = assembler.stats.incomplete + assembler.stats.malformed
                before += assembler.stats.oversize
                crop = assembler.feed(frame, recv_mono)
                after = assembler.stats.incomplete + assembler.stats.malformed
                if after + assembler.stats.oversize > before:
                    self._reject(stream, "crop", f"crop dropped: {assembler.last_error}")
                if crop is not None:
                    self.stats.crops += 1
                    self._submit(stream, recv_mono, functools.partial(self._decide_crop, crop))
            elif frame.frame_type == FrameType.EMBEDDING:
                self.stats.embeddings += 1
                self._submit(stream, recv_mono, functools.partial(self._decide_embedding, frame))
            else:
                rest.append(frame)
        return rest

    def _submit(self, stream: str, recv_mono: float, job: Callable[[], FaceOutcome]) -> None:
        if self._pending >= MAX_PENDING:
            self.stats.dropped_busy += 1
            self._reject(stream, "busy", f"face dropped: {MAX_PENDING} already waiting")
            return
        self._pending += 1
        self._idle.clear()
        future = asyncio.get_running_loop().run_in_executor(self._worker, job)
        future.add_done_callback(lambda f: self._decided(stream, recv_mono, f))

    def _decided(self, stream: str, recv_mono: float, future: asyncio.Future[FaceOutcome]) -> None:
        self._pending -= 1
        if not self._pending:
            self._idle.set()
        if future.cancelled():
            return
        err = future.exception()
        if isinstance(err, ModelMismatchError):
            self._reject(stream, "model_mismatch", str(err))
            return
        if isinstance(err, (EdgeAgentError, ProtocolError, ValueError)):
            self._reject(stream, type(err).__name__, str(err))
            return
        if err is not None:
            log.error("face decision failed", exc_info=err)
            self._reject(stream, "internal", f"internal error: {err}")
            return
        self._publish_decision(stream, future.result(), (time.monotonic() - recv_mono) * 1000)

    # -- decisions (worker thread) ---------------------------------------------------------

    def _decide_crop(self, crop: FaceCrop) -> FaceOutcome:
        embedder, index = self.embedder, self.index
        assert embedder is not None
        assert index is not None
        started = time.perf_counter()
        image = decode_crop(crop)
        vector = embedder.embed([image])[0]
        embed_ms = (time.perf_counter() - started) * 1000
        decision = index.identify(vector, self.threshold, k=self.config.top_k)
        return FaceOutcome(decision, "crop", embed_ms, crop.crop_id)

    def _decide_embedding(self, frame: Frame) -> FaceOutcome:
        index = self.index
        assert index is not None
        embedding = frame.embedding()
        decision = index.identify(
            embedding.values, self.threshold, k=self.config.top_k, model=embedding.model
        )
        return FaceOutcome(decision, "embedding", 0.0, None)

    def identify_vector(self, vector: npt.NDArray[np.floating], model: str | None) -> Decision:
        """Identify one embedding against the current index (any thread)."""
        index = self.index
        assert index is not None
        return index.identify(vector, self.threshold, k=self.config.top_k, model=model)

    # -- events ----------------------------------------------------------------------------

    def _publish_decision(self, stream: str, outcome: FaceOutcome, latency_ms: float) -> None:
        decision = outcome.decision
        name, _, version = decision.model.partition("@")
        body: dict[str, Any] = {
            "score": round(decision.score, 4),
            "threshold": decision.threshold,
            "latency_ms": round(latency_ms, 3),
            "embed_ms": round(outcome.embed_ms, 3),
            "match_ms": round(decision.match_ms, 3),
            "model": name,
            "model_version": version,
            "source": outcome.source,
        }
        if outcome.crop_id is not None:
            body["crop_id"] = outcome.crop_id
        if self.config.top_k > 1:
            body["candidates"] = [
                {"identity": c.identity, "score": round(c.score, 4)} for c in decision.candidates
            ]
        if decision.identity is not None:
            self.stats.matches += 1
            self._event("face.match", "info", stream, identity=decision.identity, **body)
        else:
            self.stats.unknown += 1
            self._event("face.unknown", "info", stream, **body)

    def _reject(self, stream: str | None, reason: str, message: str) -> None:
        """Publish a rejection once per reason and minute; count the repeats in between."""
        self.stats.rejected += 1
        key = (stream or "", reason)
        now = time.monotonic()
        last, suppressed = self._rejections.get(key, (float("-inf"), 0))
        if now - last < REJECT_REPEAT_S:
            self._rejections[key] = (last, suppressed + 1)
            return
        self._rejections[key] = (now, 0)
        self._event(
            "face.rejected", "warning", stream, reason=reason, detail=message, repeats=suppressed
        )

    def _event(self, kind: str, severity: str, sensor: str | None, **body: Any) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            loop.call_soon_threadsafe(lambda: self.emit(kind, severity, sensor=sensor, **body))
        else:
            self.emit(kind, severity, sensor=sensor, **body)

    def health(self) -> dict[str, Any]:
        """Counters and gallery size, for status and heartbeats."""
        index = self.index
        return {
            "model": index.model if index else None,
            "identities": len(index.identities) if index else 0,
            "templates": index.size if index else 0,
            "dtype": index.dtype if index else None,
            "threshold": self.threshold if self.embedder else None,
            **self.stats.__dict__,
        }


async def start_face_pipeline(
    config: AgentConfig,
    emit: Emit,
    *,
    environ: dict[str, str] | None = None,
    find: Callable[[str, list[Path]], Bundle] | None = None,
) -> FacePipeline | None:
    """Build and open the face pipeline if ``faces.enabled``; a failure is an event, not fatal.

    Returns:
        The open pipeline, or None when faces are disabled or could not start (then a
        ``face.unavailable`` error event says why and the rest of the daemon runs on).
    """
    faces = config.faces
    if not faces.enabled:
        return None
    pipeline = FacePipeline(
        faces,
        gallery_path=faces.resolved_gallery_path(Path(config.storage.path)),
        model_dirs=config.models.dirs,
        emit=emit,
        environ=environ if environ is not None else dict(os.environ),
        find=find,
    )
    pipeline._loop = asyncio.get_running_loop()
    try:
        await asyncio.to_thread(pipeline.open)
    except (EdgeAgentError, OSError) as err:
        with contextlib.suppress(Exception):
            pipeline.close()
        emit("face.unavailable", "error", sensor=None, reason=str(err))
        return None
    return pipeline
