"""`edge-agent faces ...`: enrol, list, remove and identify people; calibrate; manage the key.

Every command works on the gallery and model the config names (`[faces]`), also while the
daemon runs: the daemon notices gallery changes within a second and publishes them as
`face.audit` events. Images are PGM/PPM files (JPEG/PNG with the `jpeg` extra) or raw
pixels with `--raw WIDTHxHEIGHTxCHANNELS`.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edge_agent.commands.control import JsonOption, ToolConfigOption, resolve_config

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from edge_agent.config import AgentConfig
    from edge_agent.faces.embedder import FaceEmbedder
    from edge_agent.faces.store import GalleryStore

faces_app = typer.Typer(
    help="Face gallery: enrol, list, remove, identify, calibrate, rotate the key.",
    no_args_is_help=True,
)

EXIT_FAILED = 1
EXIT_USAGE = 2

RawOption = Annotated[
    str | None,
    typer.Option(
        "--raw",
        help="Images are raw pixels WIDTHxHEIGHTxCHANNELS (1 grey, 3 RGB), e.g. 112x112x3.",
    ),
]


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}"


def _gallery_path(cfg: AgentConfig) -> Path:
    return cfg.faces.resolved_gallery_path(Path(cfg.storage.path))


def _open_store(cfg: AgentConfig, *, create: bool = False) -> GalleryStore:
    from edge_agent.faces.errors import FaceError
    from edge_agent.faces.keys import resolve_key_source
    from edge_agent.faces.store import open_gallery

    try:
        source = resolve_key_source(cfg.faces.key_file, cfg.faces.key_credential)
        return open_gallery(_gallery_path(cfg), source, create=create)
    except FaceError as err:
        raise _fail(str(err)) from err


def _open_embedder(cfg: AgentConfig) -> FaceEmbedder:
    from edge_agent.errors import BundleError, RuntimeBackendError
    from edge_agent.faces.embedder import open_embedder

    try:
        return open_embedder(cfg.faces.model, cfg.models.dirs)
    except (BundleError, RuntimeBackendError) as err:
        raise _fail(str(err)) from err


def _model_ref(cfg: AgentConfig) -> str:
    """``name@version`` of the configured face model, without loading it."""
    from edge_agent.errors import BundleError
    from edge_agent.inference.bundle import find_bundle, shipped_models_dir

    try:
        return find_bundle(cfg.faces.model, [*cfg.models.dirs, shipped_models_dir()]).ref
    except BundleError as err:
        raise _fail(str(err)) from err


def _load_images(paths: list[Path], raw: str | None) -> list[npt.NDArray[np.uint8]]:
    from edge_agent.faces.errors import ImageError
    from edge_agent.faces.images import from_raw, read_image

    size: tuple[int, int, int] | None = None
    if raw is not None:
        try:
            w, h, c = (int(p) for p in raw.lower().split("x"))
            size = (w, h, c)
        except ValueError as err:
            raise _fail(f"--raw {raw!r} is not WIDTHxHEIGHTxCHANNELS", EXIT_USAGE) from err
    images = []
    for path in paths:
        try:
            if size is None:
                images.append(read_image(path))
            else:
                images.append(from_raw(path.read_bytes(), *size, source=str(path)))
        except ImageError as err:
            raise _fail(str(err), EXIT_USAGE) from err
        except OSError as err:
            raise _fail(f"{path}: {err.strerror}", EXIT_USAGE) from err
    return images


def _threshold(cfg: AgentConfig, embedder: FaceEmbedder) -> float:
    if cfg.faces.threshold is not None:
        return cfg.faces.threshold
    if embedder.spec.threshold is None:
        raise _fail(
            f"no threshold: {embedder.ref} suggests none; set faces.threshold to the value "
            "`edge-agent faces calibrate` gives for this deployment"
        )
    return embedder.spec.threshold


@faces_app.command("keygen")
def keygen(path: Annotated[Path, typer.Argument(help="Key file to create (mode 0600).")]) -> None:
    """Create a new random gallery key for `faces.key_file` (or a systemd credential)."""
    from edge_agent.faces.errors import GalleryKeyError
    from edge_agent.faces.keys import generate_key, key_id, write_key_file

    key = generate_key()
    try:
        write_key_file(path, key)
    except GalleryKeyError as err:
        raise _fail(str(err)) from err
    typer.echo(f"{path}: new key {key_id(key)} (mode 0600). Back it up: without it the gallery")
    typer.echo("cannot be read. Set faces.key_file, or `systemd-creds encrypt` it for the unit.")


@faces_app.command("enroll")
def enroll(
    images: Annotated[list[Path], typer.Argument(help="Face images of this person.")],
    identity: Annotated[str, typer.Option("--id", help="Identity id (badge, employee number).")],
    name: Annotated[
        str | None, typer.Option(help="Display name (stored encrypted; needed for a new id).")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace this person's templates of the model.")
    ] = False,
    raw: RawOption = None,
    config: ToolConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Enrol a person from one or more face images (one template per image)."""
    from edge_agent.faces.images import encode_pnm
    from edge_agent.faces.index import FaceIndex

    cfg, _ = resolve_config(config)
    pictures = _load_images(images, raw)
    embedder = _open_embedder(cfg)
    store = _open_store(cfg, create=True)
    try:
        vectors = embedder.embed(pictures)
        # A face that already matches someone else is worth a warning: a duplicate
        # enrolment, or a threshold set too low.
        existing = store.load_templates(embedder.ref)
        others = [i for i in existing.identities if i != identity]
        clashes: list[dict[str, Any]] = []
        if others and existing.vectors.size:
            index = FaceIndex(embedder.ref, existing.identities, existing.owners, existing.vectors)
            threshold = _threshold(cfg, embedder)
            for path, vector in zip(images, vectors, strict=True):
                for match in index.search(vector, 2):
                    if match.identity != identity and match.score >= threshold:
                        clashes.append(
                            {"image": str(path), "identity": match.identity, "score": match.score}
                        )
                        break
        kept = [encode_pnm(p) for p in pictures] if cfg.faces.store_images else []
        try:
            added = store.enroll(
                identity,
                vectors,
                embedder.ref,
                actor=_actor(),
                name=name,
                replace=replace,
                images=kept,
            )
        except ValueError as err:
            raise _fail(str(err), EXIT_USAGE) from err
    finally:
        store.close()
        embedder.close()
    result = {
        "identity": identity,
        "model": embedder.ref,
        "templates_added": added,
        "images_kept": len(kept),
        "also_matches": clashes,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{identity}: {added} template(s) of {embedder.ref} enrolled")
    for clash in clashes:
        typer.echo(
            f"warning: {clash['image']} also matches {clash['identity']} "
            f"(score {clash['score']:.3f}): a duplicate person, or a threshold too low",
            err=True,
        )


@faces_app.command("list")
def list_identities(config: ToolConfigOption = None, as_json: JsonOption = False) -> None:
    """List enrolled identities with their names and templates per model."""
    cfg, _ = resolve_config(config)
    store = _open_store(cfg)
    try:
        people = store.identities()
    finally:
        store.close()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": p.id,
                        "name": p.name,
                        "templates": p.templates,
                        "created": p.created,
                        "updated": p.updated,
                    }
                    for p in people
                ],
                indent=2,
            )
        )
        return
    if not people:
        typer.echo("no one enrolled")
    for p in people:
        models = ", ".join(f"{n} × {m}" for m, n in sorted(p.templates.items())) or "no templates"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.updated))
        typer.echo(f"{p.id:<20} {p.name:<28} {models}  (changed {when})")


@faces_app.command("remove")
def remove(
    identity: Annotated[str, typer.Argument(help="Identity id to remove.")],
    config: ToolConfigOption = None,
) -> None:
    """Remove a person and every template (and kept image) of theirs; audited."""
    cfg, _ = resolve_config(config)
    store = _open_store(cfg)
    try:
        removed = store.remove(identity, actor=_actor())
    finally:
        store.close()
    if removed is None:
        raise _fail(f"{identity!r} is not enrolled (see `edge-agent faces list`)")
    typer.echo(f"{identity}: removed with {removed} template(s)")


@faces_app.command("identify")
def identify(
    image: Annotated[Path, typer.Argument(help="Face image to identify.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=20, help="Candidates shown.")] = 3,
    raw: RawOption = None,
    config: ToolConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Identify one face image against the gallery, as the daemon would."""
    from edge_agent.faces.index import FaceIndex

    cfg, _ = resolve_config(config)
    (picture,) = _load_images([image], raw)
    embedder = _open_embedder(cfg)
    store = _open_store(cfg)
    try:
        started = time.perf_counter()
        vector = embedder.embed([picture])[0]
        embed_ms = (time.perf_counter() - started) * 1000
        templates = store.load_templates(embedder.ref)
        index = FaceIndex(
            embedder.ref,
            templates.identities,
            templates.owners,
            templates.vectors,
            dtype=cfg.faces.gallery_dtype,
            dim=embedder.dim,
        )
        decision = index.identify(vector, _threshold(cfg, embedder), k=top_k)
        names = {c.identity: store.name_of(c.identity) for c in decision.candidates}
    finally:
        store.close()
        embedder.close()
    candidates = [
        {"identity": c.identity, "name": names[c.identity], "score": round(c.score, 4)}
        for c in decision.candidates
    ]
    result: dict[str, Any] = {
        "identity": decision.identity,
        "name": names.get(decision.identity) if decision.identity else None,
        "score": round(decision.score, 4),
        "threshold": decision.threshold,
        "model": decision.model,
        "embed_ms": round(embed_ms, 3),
        "match_ms": round(decision.match_ms, 3),
        "gallery": {"identities": len(index.identities), "templates": index.size},
        "candidates": candidates,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        verdict = (
            f"match: {decision.identity} ({result['name']})" if decision.identity else "unknown"
        )
        typer.echo(
            f"{verdict}  score {decision.score:.4f} (threshold {decision.threshold:.4f}), "
            f"embed {embed_ms:.1f} ms, match {decision.match_ms:.2f} ms over {index.size} "
            "template(s)"
        )
        for c in candidates:
            typer.echo(f"  {c['score']:.4f}  {c['identity']}  {c['name']}")
    if decision.identity is None:
        raise typer.Exit(3)


@faces_app.command("calibrate")
def calibrate_command(
    embeddings: Annotated[
        Path | None,
        typer.Option(help="A .npz with `embeddings` (n × dim) and `labels` (n person labels)."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="A directory with one sub-directory of face images per person."),
    ] = None,
    gallery: Annotated[
        bool, typer.Option("--gallery", help="Use the enrolled templates (≥ 2 per person).")
    ] = False,
    target_far: Annotated[
        float, typer.Option(min=1e-9, max=0.5, help="False accept rate to hold.")
    ] = 1e-4,
    config: ToolConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Measure FAR/FRR from labelled embeddings and print the threshold for a target FAR."""
    import numpy as np

    from edge_agent.faces.calibrate import calibrate, pair_scores

    if sum(x is not None and x is not False for x in (embeddings, images, gallery)) != 1:
        raise _fail("give exactly one of --embeddings, --images, --gallery", EXIT_USAGE)
    cfg, _ = resolve_config(config)
    if embeddings is not None:
        try:
            with np.load(embeddings, allow_pickle=False) as data:
                vectors, labels = data["embeddings"], data["labels"]
        except (OSError, KeyError, ValueError) as err:
            raise _fail(f"{embeddings}: needs arrays `embeddings` and `labels` ({err})") from err
        source = str(embeddings)
    elif images is not None:
        people = sorted(p for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
        if len(people) < 2:
            raise _fail(f"{images}: needs one sub-directory per person, at least two", EXIT_USAGE)
        embedder = _open_embedder(cfg)
        try:
            parts, names = [], []
            for person in people:
                files = sorted(f for f in person.iterdir() if f.is_file())
                parts.append(embedder.embed(_load_images(files, None)))
                names += [person.name] * len(files)
        finally:
            embedder.close()
        vectors, labels = np.concatenate(parts), np.array(names)
        source = f"{images} ({embedder.ref})"
    else:
        ref = _model_ref(cfg)
        store = _open_store(cfg)
        try:
            templates = store.load_templates(ref)
        finally:
            store.close()
        vectors, labels = templates.vectors, templates.owners
        source = f"gallery ({ref})"
    try:
        genuine, impostor = pair_scores(vectors, labels)
        result = calibrate(genuine, impostor, target_far=target_far)
    except ValueError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    if as_json:
        body = {
            "source": source,
            **{k: v for k, v in result.__dict__.items() if k not in ("curve", "operating_points")},
            "operating_points": [p.__dict__ for p in result.operating_points],
            "curve": [p.__dict__ for p in result.curve],
        }
        typer.echo(json.dumps(body, indent=2))
        return
    typer.echo(
        f"{source}: {result.genuine_pairs} genuine and {result.impostor_pairs} impostor pairs"
    )
    typer.echo("\n   FAR       threshold   TAR       FRR")
    for p in result.operating_points:
        typer.echo(
            f"  {p.far:<9.2e} {p.threshold:<10.4f} {100 * (1 - p.frr):6.2f} %  {100 * p.frr:6.2f} %"
        )
    typer.echo("\n  threshold   FAR        FRR")
    for p in result.curve[:: max(1, len(result.curve) // 20)]:
        typer.echo(f"  {p.threshold:<10.4f}  {p.far:<9.2e}  {p.frr:.4f}")
    typer.echo(
        f"\nEER {100 * result.eer:.3f} % at {result.eer_threshold:.4f}. For FAR ≤ {target_far:g}: "
        f"threshold {result.threshold:.4f}, TAR {100 * result.tar:.2f} % "
        f"(measured FAR {result.far:.2e})."
    )
    typer.echo(f"Set it with:  [faces] threshold = {result.threshold:.4f}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)


@faces_app.command("rotate-key")
def rotate_key(
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            help="Write the new key here (needed when the key is a systemd credential); "
            "default: replace faces.key_file in place."
        ),
    ] = None,
    config: ToolConfigOption = None,
) -> None:
    """Re-encrypt the gallery under a new random key, crash-safely."""
    from edge_agent.durable import fsync_dir
    from edge_agent.faces.errors import FaceError
    from edge_agent.faces.keys import generate_key, resolve_key_source, write_key_file

    cfg, _ = resolve_config(config)
    try:
        source = resolve_key_source(cfg.faces.key_file, cfg.faces.key_credential)
    except FaceError as err:
        raise _fail(str(err)) from err
    if source.credential and new_key_file is None:
        raise _fail(
            f"the key comes from {source}; give --new-key-file PATH, then update the credential",
            EXIT_USAGE,
        )
    store = _open_store(cfg)
    key = generate_key()
    # The new key is on disk before any row is re-sealed with it: a crash at any point
    # leaves a gallery that the old or the staged key opens (open_gallery finishes the job).
    staged = new_key_file if new_key_file is not None else source.next_path
    try:
        try:
            write_key_file(staged, key)
        except FaceError as err:
            raise _fail(
                f"{err}. A leftover .next file is from an interrupted rotation: start the "
                "daemon or any `faces` command once to finish it, then retry"
                if new_key_file is None
                else str(err)
            ) from err
        old_id = store.key_id
        new_id = store.rotate_key(key, actor=_actor())
    finally:
        store.close()
    if new_key_file is None:
        os.replace(staged, source.path)
        fsync_dir(source.path.parent)
        typer.echo(f"gallery re-encrypted: key {old_id} -> {new_id}, written to {source.path}")
    else:
        typer.echo(f"gallery re-encrypted: key {old_id} -> {new_id}, written to {new_key_file}")
        typer.echo(
            "point faces.key_file (or the unit's credential) at it before the daemon restarts",
        )
    typer.echo("restart the daemon (`systemctl restart edge-agent`) so it uses the new key")


@faces_app.command("audit")
def audit(
    limit: Annotated[int, typer.Option(min=1, help="Most recent entries shown.")] = 50,
    config: ToolConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the gallery's audit log and check its hash chain (exit 1 if broken)."""
    cfg, _ = resolve_config(config)
    store = _open_store(cfg)
    try:
        entries = store.audit_log(0, limit=1_000_000)[-limit:]
        broken = store.verify_audit()
    finally:
        store.close()
    if as_json:
        typer.echo(
            json.dumps({"entries": [e.as_dict() for e in entries], "broken_at": broken}, indent=2)
        )
    else:
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts))
            typer.echo(
                f"{e.id:>6} {when} {e.action:<13} {e.identity_id or '-':<20} "
                f"{e.templates:>4} {e.actor:<20} {e.detail}"
            )
        typer.echo("audit chain: " + ("intact" if broken is None else f"BROKEN at entry {broken}"))
    if broken is not None:
        raise typer.Exit(EXIT_FAILED)


@faces_app.command("checksum")
def checksum(config: ToolConfigOption = None, as_json: JsonOption = False) -> None:
    """Print the gallery checksum of the configured model (what `faces.checksum` returns)."""
    cfg, _ = resolve_config(config)
    ref = _model_ref(cfg)
    store = _open_store(cfg)
    try:
        result = store.checksum(ref)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(result.__dict__, indent=2))
    else:
        typer.echo(
            f"{result.model}: {result.identities} identities, {result.templates} templates, "
            f"checksum {result.checksum}"
        )


def register(app: typer.Typer) -> None:
    """Add the `faces` group to the CLI."""
    app.add_typer(faces_app, name="faces")
