"""`edge-agent models keygen|pack|sign|verify|install|list|activate|rollback|remove`.

The publisher's side (keygen, pack, sign, verify) works on files. The gateway's side
(install, list, activate, rollback, remove) talks to the running daemon through its control
socket, so the swap happens between two windows and probation applies; when no daemon runs,
it changes the install directory directly (taking the same lock the daemon holds) and the
daemon loads the result when it starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_agent.commands.control import (
    SocketOption,
    ToolConfigOption,
    resolve_config,
    socket_for,
)
from edge_agent.commands.models import models_app
from edge_agent.runner import EXIT_CONFIG

EXIT_REFUSED = 2
INSTALL_TIMEOUT_S = 600.0

KeyOption = Annotated[
    Path,
    typer.Option(
        "--key",
        help="Publisher's private key (PEM) from `models keygen`; an encrypted one is read "
        "with the passphrase in EDGE_AGENT_KEY_PASSPHRASE.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def _fail(message: str, code: int = EXIT_REFUSED) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _private_key(path: Path) -> Any:
    from edge_agent.ota.keys import load_private_key

    try:
        return load_private_key(path)
    except OSError as err:  # missing, a directory, unreadable
        raise _fail(
            f"signing key {path}: cannot be read ({err.strerror}); make one with "
            "`edge-agent models keygen`",
            EXIT_CONFIG,
        ) from err
    except ValueError as err:
        raise _fail(str(err)) from err


def _split_ref(ref: str, *, version: bool) -> tuple[str, str]:
    name, _, ver = ref.partition("@")
    if not name or (version and not ver):
        raise _fail(f"expected {'NAME@VERSION' if version else 'NAME'}, got {ref!r}", EXIT_CONFIG)
    return name, ver


# -- the publisher ----------------------------------------------------------------------------


def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to create (mode 0600).")],
) -> None:
    """Create a publisher signing key; prints the public key for `ota.trusted_keys`."""
    from edge_agent.ota.keys import decode_public_key, generate_key, key_id

    try:
        public = generate_key(out)
    except FileExistsError as err:
        raise _fail(f"{out} exists; a signing key is never overwritten") from err
    typer.echo(f"private key: {out} (keep it offline; whoever holds it can update your fleet)")
    typer.echo(f"key id:      {key_id(decode_public_key(public))}")
    typer.echo("add to the gateways' config:")
    typer.echo(f'[ota]\ntrusted_keys = ["{public}"]')


def pack(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory <name>/<version>/.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Archive to write (default: <name>-<version>.bundle.tar.gz here)."),
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Sign with this private key too.")
    ] = None,
    golden: Annotated[
        bool,
        typer.Option(help="Add golden vectors (the model's outputs on fixed inputs) if missing."),
    ] = True,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the golden outputs.")] = 1e-3,
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the golden outputs.")] = 1e-3,
) -> None:
    """Archive a bundle for over-the-air deployment (prints what `model.deploy` needs)."""
    from edge_agent.errors import BundleError, RuntimeBackendError
    from edge_agent.inference.bundle import load_bundle
    from edge_agent.ota.archive import ARCHIVE_SUFFIX, pack_bundle

    try:
        manifest = load_bundle(bundle).manifest
        target = out or Path(f"{manifest.name}-{manifest.version}{ARCHIVE_SUFFIX}")
        packed = pack_bundle(
            bundle,
            target,
            key=_private_key(key) if key else None,
            golden=golden,
            atol=atol,
            rtol=rtol,
        )
    except (BundleError, RuntimeBackendError, OSError) as err:
        raise _fail(str(err)) from err
    _print_packed(packed)


def sign(
    archive: Annotated[Path, typer.Argument(help="Archive made by `models pack`.")],
    key: KeyOption,
    out: Annotated[Path | None, typer.Option(help="Write here (default: in place).")] = None,
) -> None:
    """Sign (or re-sign) an archive; every file is checked against the manifest first."""
    from edge_agent.ota.archive import sign_archive
    from edge_agent.ota.errors import UpdateRejectedError

    try:
        packed = sign_archive(archive, _private_key(key), out)
    except (UpdateRejectedError, OSError) as err:
        raise _fail(str(err)) from err
    _print_packed(packed)


def _print_packed(packed: Any) -> None:
    typer.echo(
        json.dumps(
            {
                "archive": str(packed.path),
                "model": packed.name,
                "version": packed.version,
                "sha256": packed.sha256,
                "size": packed.size,
                "signed_by": packed.signer,
            },
            indent=2,
        )
    )
    if packed.signer is None:
        typer.echo("unsigned: gateways refuse it until `edge-agent models sign`", err=True)


def verify(
    target: Annotated[
        str, typer.Argument(help="An archive file, or NAME@VERSION installed on this gateway.")
    ],
    config: ToolConfigOption = None,
    trusted_key: Annotated[
        list[str] | None,
        typer.Option(help="Trust this public key (base64) instead of the config's; repeatable."),
    ] = None,
) -> None:
    """Check a signature and every file's digest without installing anything."""
    from edge_agent.errors import BundleError
    from edge_agent.ota.archive import inspect_archive, verify_installed
    from edge_agent.ota.errors import OtaStateError, UpdateRejectedError
    from edge_agent.ota.repository import install_root

    cfg, _ = resolve_config(config)
    keys = list(trusted_key or cfg.ota.trusted_keys)
    try:
        if Path(target).is_file():
            info = inspect_archive(Path(target), keys, cfg.ota.max_bundle_bytes)
            ref, signer = info.ref, info.signer
        else:
            from edge_agent.ota.repository import ModelRepository

            if "@" not in target:
                raise _fail(
                    f"{target}: no such archive file (or give NAME@VERSION of an installed version)"
                )
            name, version = _split_ref(target, version=True)
            path = ModelRepository(install_root(cfg)).version_dir(name, version)
            if not path.is_dir():
                raise _fail(
                    f"{target} is neither an archive file nor installed in {install_root(cfg)}; "
                    "`edge-agent models list` shows what is installed"
                )
            ref, signer = verify_installed(path, keys)
    except (UpdateRejectedError, BundleError, OtaStateError, OSError) as err:
        raise _fail(str(err)) from err
    typer.echo(f"{ref}: ok, signed by {signer}, every file matches its manifest")


# -- the gateway --------------------------------------------------------------------------------


def _daemon(
    config: Path | None, socket: Path | None, cmd: str, **args: Any
) -> dict[str, Any] | None:
    """The running daemon's reply, or None when no daemon runs."""
    from edge_agent.service.control import ControlError, DaemonNotRunningError, request

    path = socket_for(config, socket)
    try:
        return request(path, cmd, timeout=INSTALL_TIMEOUT_S, **args)
    except DaemonNotRunningError:
        return None
    except ControlError as err:
        raise _fail(str(err), 1) from err


def _offline_repo(cfg: Any) -> Any:
    from edge_agent.ota.errors import OtaStateError
    from edge_agent.ota.repository import ModelRepository, install_root

    repo = ModelRepository(install_root(cfg))
    try:
        repo.open()
    except (OtaStateError, OSError) as err:
        raise _fail(str(err), 1) from err
    return repo


def _report(reply: dict[str, Any]) -> None:
    if not reply.get("ok", False):
        where = f" at {reply['stage']} ({reply.get('check')})" if "stage" in reply else ""
        raise _fail(f"refused{where}: {reply.get('reason') or reply.get('error')}")
    typer.echo(json.dumps(reply, indent=2, default=str))


def _download(url: str, sha256: str | None, size: int | None, cfg: Any, into: Path) -> Path:
    import threading

    from edge_agent.ota.errors import UpdateRejectedError
    from edge_agent.ota.fetch import FetchLimits, fetch

    if sha256 is None or size is None:
        raise _fail("a URL needs --sha256 and --size (as `models pack` printed them)", EXIT_CONFIG)
    ota = cfg.ota
    limits = FetchLimits(
        max_bytes=ota.max_bundle_bytes,
        allow_http=ota.allow_http,
        ca_file=ota.ca_file,
        timeout_s=ota.download_timeout_s,
        attempts=ota.download_attempts,
    )
    with typer.progressbar(length=size, label="downloading", file=None) as bar:
        done = [0]

        def progress(received: int, total: int) -> None:
            bar.update(received - done[0])
            done[0] = received

        try:
            return fetch(
                url,
                into,
                sha256=sha256,
                size=size,
                limits=limits,
                on_progress=progress,
                cancel=threading.Event(),
            )
        except UpdateRejectedError as err:
            raise _fail(str(err)) from err


def install(
    source: Annotated[str, typer.Argument(help="Archive file or https:// URL.")],
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 (for a URL).")] = None,
    size: Annotated[int | None, typer.Option(help="Expected size in bytes (for a URL).")] = None,
    activate: Annotated[
        bool, typer.Option(help="Activate once installed (on probation when the daemon runs).")
    ] = True,
    config: ToolConfigOption = None,
    socket: SocketOption = None,
) -> None:
    """Verify, self-test and install an archive; activate it unless --no-activate."""
    from edge_agent.ota.archive import inspect_archive
    from edge_agent.ota.errors import UpdateRejectedError

    cfg, _ = resolve_config(config)
    with tempfile.TemporaryDirectory(prefix="edge-agent-install-") as tmp:
        if "://" in source and not source.startswith("file://"):
            # The daemon (another user) reads the download here; bundles are signed, not secret.
            os.chmod(tmp, 0o755)  # noqa: S103
            archive = _download(source, sha256, size, cfg, Path(tmp))
            os.chmod(archive, 0o644)
        else:
            archive = Path(source.removeprefix("file://")).resolve()
        try:  # refuse early and clearly, before bothering the daemon
            inspect_archive(archive, list(cfg.ota.trusted_keys), cfg.ota.max_bundle_bytes)
        except (UpdateRejectedError, OSError) as err:
            raise _fail(str(err)) from err
        reply = _daemon(config, socket, "models.install", archive=str(archive), activate=activate)
        if reply is None:
            reply = _install_offline(cfg, archive, activate)
    _report(reply)


def _install_offline(cfg: Any, archive: Path, activate: bool) -> dict[str, Any]:
    from edge_agent.errors import BundleError
    from edge_agent.inference.bundle import Bundle, load_bundle, shipped_models_dir
    from edge_agent.ota.archive import extract_archive, inspect_archive
    from edge_agent.ota.errors import UpdateRejectedError
    from edge_agent.ota.staging import stage_bundle

    typer.echo("edge-agent is not running: installing directly", err=True)
    repo = _offline_repo(cfg)
    search = [*cfg.models.dirs, shipped_models_dir()]
    staging = None
    try:
        ota = cfg.ota
        info = inspect_archive(archive, list(ota.trusted_keys), ota.max_bundle_bytes)
        name, version = info.manifest.name, info.manifest.version
        staging = repo.new_staging()
        extract_archive(archive, info, staging)
        bundle = load_bundle(staging)
        running = _resolved(repo, name, search)
        runtime, report = stage_bundle(
            bundle,
            running=running.manifest if running else None,
            budget_ms=ota.latency_budget_ms,
            require_golden=ota.require_golden,
        )
        runtime.close()
        dest = repo.commit(staging, name, version)
        staging = None
        body: dict[str, Any] = {
            "ok": True,
            "model": name,
            "version": version,
            "installed": str(dest),
            "checks": report.as_dict(),
            "activated": False,
        }
        if activate:
            current = running.manifest.version if isinstance(running, Bundle) else None
            repo.begin_trial(name, version, current)
            repo.confirm(name)
            body["activated"] = True
            body["removed"] = repo.prune(name, ota.keep_versions)
        return body
    except UpdateRejectedError as err:
        return {"ok": False, "stage": err.stage, "check": err.check, "reason": err.reason}
    except BundleError as err:
        return {"ok": False, "error": str(err)}
    finally:
        if staging is not None:
            repo.discard_staging(staging)
        repo.close()


def _resolved(repo: Any, name: str, search: list[Path]) -> Any:
    """What the daemon would load for a bare `name` (None when nothing)."""
    from edge_agent.errors import BundleError
    from edge_agent.inference.bundle import find_bundle

    serving = repo.serving(name)
    try:
        return repo.find(name, serving, search) if serving else find_bundle(name, search)
    except BundleError:
        return None


def list_models(
    config: ToolConfigOption = None, socket: SocketOption = None, as_json: JsonOption = False
) -> None:
    """Installed versions of each model: active, on probation, history, failed, serving."""
    from edge_agent.inference.bundle import shipped_models_dir
    from edge_agent.ota.errors import OtaStateError
    from edge_agent.ota.repository import install_root, read_state

    cfg, _ = resolve_config(config)
    reply = _daemon(config, socket, "models.list")
    if reply is None:
        root = install_root(cfg)
        try:
            state = read_state(root)
        except OtaStateError as err:
            raise _fail(str(err), 1) from err
        models: dict[str, Any] = {}
        search = [*cfg.models.dirs, shipped_models_dir()]
        names = set(state.models)
        if root.is_dir():
            names |= {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        for name in sorted(names):
            model = state.models.get(name)
            d = root / name
            elsewhere = {
                p.name for base in search if (base / name).is_dir() for p in (base / name).iterdir()
            }
            models[name] = {
                **(model.model_dump() if model else {}),
                "installed": sorted(p.name for p in d.iterdir()) if d.is_dir() else [],
                "elsewhere": sorted(elsewhere),
            }
        reply = {"ok": True, "install_dir": str(root), "models": models, "running": False}
    if not reply.get("ok"):
        raise _fail(str(reply.get("error")), 1)
    if as_json:
        typer.echo(json.dumps(reply, indent=2, default=str))
        return
    typer.echo(f"install dir: {reply.get('install_dir')}")
    for name, m in reply.get("models", {}).items():
        typer.echo(f"{name}")
        typer.echo(f"  active:    {m.get('active') or '(highest on the search path)'}")
        if m.get("serving"):
            typer.echo(f"  serving:   {', '.join(m['serving'])}")
        probation = m.get("probation")
        if probation:
            typer.echo(
                f"  probation: {probation['version']} ({probation['windows']} windows, "
                f"{probation['seconds']} s so far; previous {probation['previous']})"
            )
        if m.get("history"):
            typer.echo(f"  history:   {', '.join(m['history'])}")
        typer.echo(f"  installed: {', '.join(m.get('installed', [])) or '-'}")
        for version, why in (m.get("failed") or {}).items():
            typer.echo(f"  failed:    {version}: {why}")


def activate_version(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION installed (or on the search path).")],
    config: ToolConfigOption = None,
    socket: SocketOption = None,
) -> None:
    """Make an installed version active (self-test, then swap and probation if running)."""
    name, version = _split_ref(ref, version=True)
    cfg, _ = resolve_config(config)
    reply = _daemon(config, socket, "models.activate", model=name, version=version)
    if reply is None:
        from edge_agent.inference.bundle import shipped_models_dir

        repo = _offline_repo(cfg)
        try:
            search = [*cfg.models.dirs, shipped_models_dir()]
            from edge_agent.errors import BundleError

            try:
                repo.find(name, version, search)
            except BundleError as err:
                raise _fail(str(err)) from err
            running = _resolved(repo, name, search)
            repo.begin_trial(name, version, running.manifest.version if running else None)
            repo.confirm(name)
        finally:
            repo.close()
        reply = {"ok": True, "model": name, "active": version, "running": False}
    _report(reply)


def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the event).")] = (
        "rolled back by an operator"
    ),
    config: ToolConfigOption = None,
    socket: SocketOption = None,
) -> None:
    """Return a model to the version before (ends a probation at once)."""
    cfg, _ = resolve_config(config)
    reply = _daemon(config, socket, "models.rollback", model=name, reason=reason)
    if reply is None:
        repo = _offline_repo(cfg)
        try:
            target = repo.rollback_target(name)
            if target is None:
                raise _fail(f"{name} has no earlier version to roll back to")
            repo.record_rollback(name, target, reason)
        finally:
            repo.close()
        reply = {"ok": True, "model": name, "to_version": target, "running": False}
    _report(reply)


def remove(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to delete from the install dir.")],
    config: ToolConfigOption = None,
    socket: SocketOption = None,
) -> None:
    """Delete an installed version that is neither active nor on probation."""
    from edge_agent.ota.errors import OtaStateError

    name, version = _split_ref(ref, version=True)
    cfg, _ = resolve_config(config)
    reply = _daemon(config, socket, "models.remove", model=name, version=version)
    if reply is None:
        repo = _offline_repo(cfg)
        try:
            repo.remove(name, version)
        except OtaStateError as err:
            raise _fail(str(err)) from err
        finally:
            repo.close()
        reply = {"ok": True, "removed": ref, "running": False}
    _report(reply)


def register(app: typer.Typer) -> None:
    """Add the OTA commands to the `models` group."""
    del app
    for name, fn in (
        ("keygen", keygen),
        ("pack", pack),
        ("sign", sign),
        ("verify", verify),
        ("install", install),
        ("list", list_models),
        ("activate", activate_version),
        ("rollback", rollback),
        ("remove", remove),
    ):
        models_app.command(name)(fn)
