"""`edge-agent sensors scan|test`, `edge-agent record` and `edge-agent replay`.

What a technician on site needs to see whether a sensor is alive and what it says, and to
take a field problem home: ``scan`` lists serial ports and BLE advertisements, ``test``
connects to one sensor and shows its live rate, latest values in physical units and error
counters, ``record`` captures the raw bytes of a link with their receive times, and
``replay`` plays such a capture on a pseudo-terminal for the daemon (or ``sensors test``) to
read as if the device were plugged in. A capture can also be replayed inside the daemon by
an ``emulated`` sensor with ``capture = "FILE"``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edge_agent.commands.control import JsonOption, ToolConfigOption, resolve_config

if TYPE_CHECKING:
    from firmware_bridge.links import Link
    from firmware_bridge.protocol.v1 import Frame, Hello

sensors_app = typer.Typer(
    help="Find sensors and check that they are alive and what they say.", no_args_is_help=True
)

EXIT_NO_DATA = 1
EXIT_USAGE = 2

_BLE_ADDRESS = re.compile(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f-]{36}$")

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        help="Device profile: v1, witmotion, witmotion-ble, text, struct, struct-ble, thingy52 "
        "(default: the sensor's, else v1; struct layouts need a configured sensor).",
    ),
]
RateOption = Annotated[
    float | None,
    typer.Option(
        "--rate",
        help="Output rate of a device without a clock (witmotion, text; default: learned).",
    ),
]
BaudOption = Annotated[
    int | None, typer.Option("--baudrate", help="Serial baud rate (default: the profile's).")
]
SecondsOption = Annotated[
    float | None, typer.Option("--seconds", min=0.1, help="Stop after this long (default: Ctrl-C).")
]


def register(app: typer.Typer) -> None:
    """Add `sensors`, `record` and `replay` to the main CLI."""
    app.add_typer(sensors_app, name="sensors")
    app.command("record")(record)
    app.command("replay")(replay)


# -- resolving what to talk to -------------------------------------------------------------------


def resolve_target(
    target: str,
    config: Path | None,
    profile: str | None,
    rate: float | None = None,
    baudrate: int | None = None,
) -> Any:
    """A sensor config for a configured NAME, a serial PORT or a BLE ADDRESS.

    Raises:
        typer.Exit: the target is none of those, or the options are invalid.
    """
    from pydantic import ValidationError

    from edge_agent.config import BleSensorConfig, SerialSensorConfig
    from firmware_bridge.profiles import available_profiles, profile_config

    if profile is not None and profile not in available_profiles():
        typer.echo(
            f"error: unknown profile {profile!r}; valid: {', '.join(available_profiles())}",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE)
    cfg, _source = resolve_config(config)
    chosen = next((s for s in cfg.sensors if s.name == target), None)
    options: dict[str, Any] = {}
    if rate is not None:
        options["rate_hz"] = rate
    try:
        new_profile = profile_config(profile, **options) if profile else None
        if chosen is not None:
            updates: dict[str, Any] = {}
            if new_profile is not None:
                updates["profile"] = new_profile
            elif options:
                updates["profile"] = profile_config(chosen.profile.protocol, **options)
            if baudrate is not None and isinstance(chosen, SerialSensorConfig):
                updates["baudrate"] = baudrate
            return chosen.model_copy(update=updates) if updates else chosen
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", target).strip("-") or "sensor"
        base: dict[str, Any] = {"name": name[-64:], "models": []}
        if new_profile is not None:
            base["profile"] = new_profile
        if _BLE_ADDRESS.match(target):
            return BleSensorConfig(link="ble", address=target, **base)
        if os.path.exists(target):
            return SerialSensorConfig(link="serial", port=target, baudrate=baudrate, **base)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        typer.echo(f"error: {problems}", err=True)
        raise typer.Exit(EXIT_USAGE) from err
    names = ", ".join(s.name for s in cfg.sensors) or "none"
    typer.echo(
        f"error: {target!r} is not a configured sensor ({names}), an existing serial port or a "
        "BLE address (AA:BB:CC:DD:EE:FF); `edge-agent sensors scan` lists what is attached",
        err=True,
    )
    raise typer.Exit(EXIT_USAGE)


def _open_link(sensor: Any, sink: Any) -> Link:
    from firmware_bridge.links import open_link

    try:
        return open_link(sensor.link, sensor, sink)
    except (OSError, ValueError) as err:
        typer.echo(f"error: cannot open {sensor.name}: {err}", err=True)
        raise typer.Exit(EXIT_USAGE) from err


def _run_for(seconds: float | None, tick: Callable[[float], None], every: float = 1.0) -> float:
    """Call ``tick(elapsed)`` every ``every`` seconds until ``seconds`` pass or Ctrl-C."""
    start = time.monotonic()
    next_tick = start + every
    try:
        while True:
            now = time.monotonic()
            if seconds is not None and now - start >= seconds:
                break
            if now >= next_tick:
                tick(now - start)
                next_tick += every
            wake = min(next_tick, start + seconds) if seconds is not None else next_tick
            time.sleep(max(0.0, min(0.1, wake - time.monotonic())))
    except KeyboardInterrupt:
        pass
    return time.monotonic() - start


# -- sensors test --------------------------------------------------------------------------------


class Monitor:
    """A link sink that keeps what a technician wants to see (called from the link thread)."""

    RATE_WINDOW_S = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hello: dict[int, Hello] = {}
        self.latest: dict[int, list[float]] = {}
        self.samples = 0
        self.frames = 0
        self.gaps = 0
        self.frames_lost = 0
        self.malformed = 0
        self.state = "connecting"
        self.detail = ""
        self.events: list[dict[str, Any]] = []
        self.status: dict[str, Any] | None = None
        self._arrivals: deque[tuple[float, int]] = deque()

    def on_frames(
        self, sensor: str, frames: list[Frame], recv_mono: float, recv_wall: float
    ) -> None:
        """LinkSink: keep HELLO layouts, the newest sample and arrival counts."""
        from firmware_bridge.protocol.v1 import FrameType, ProtocolError, hello_problem

        with self._lock:
            self.frames += len(frames)
            new = 0
            for frame in frames:
                try:
                    if frame.frame_type == FrameType.HELLO:
                        announced = frame.hello()
                        problem = hello_problem(announced)
                        if problem is not None:
                            raise ProtocolError(f"HELLO refused: {problem}")
                        self.hello[frame.stream_id] = announced
                    elif frame.frame_type == FrameType.STATUS:
                        st = frame.status()
                        self.status = {
                            "uptime_s": st.uptime_s,
                            "battery_mv": st.battery_mv,
                            "temperature_c": st.temperature_c,
                            "error_flags": st.error_flags,
                            "dropped_samples": st.dropped_samples,
                        }
                    elif frame.frame_type == FrameType.IMU_BATCH:
                        samples = frame.samples()
                        hello = self.hello.get(frame.stream_id)
                        if frame.gap:
                            self.gaps += 1
                            self.frames_lost += frame.gap
                        new += len(samples)
                        if (
                            hello is not None
                            and len(samples)
                            and (samples.shape[1] == len(hello.channels))
                        ):
                            row = samples[-1].astype(float)
                            self.latest[frame.stream_id] = [
                                float(v) * c.scale for v, c in zip(row, hello.channels, strict=True)
                            ]
                except ProtocolError:
                    self.malformed += 1
            self.samples += new
            if new:
                self._arrivals.append((recv_mono, new))
                while self._arrivals and recv_mono - self._arrivals[0][0] > self.RATE_WINDOW_S:
                    self._arrivals.popleft()

    def on_link_state(self, sensor: str, state: str, detail: str) -> None:
        """LinkSink: connected or lost."""
        with self._lock:
            self.state, self.detail = state, detail
            self.events.append({"t": round(time.time(), 3), "state": state, "detail": detail})

    def rate_hz(self, now: float | None = None) -> float:
        """Samples per second over the last couple of seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [(t, n) for t, n in self._arrivals if now - t <= self.RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return sum(n for _, n in recent[1:]) / span if span > 0 else 0.0

    def values(self) -> dict[str, dict[str, Any]]:
        """Latest value of every channel (of every stream), in physical units."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for stream_id, row in sorted(self.latest.items()):
                hello = self.hello[stream_id]
                prefix = "" if stream_id == 0 else f"{stream_id}."
                for channel, value in zip(hello.channels, row, strict=True):
                    out[prefix + channel.name] = {"value": round(value, 6), "unit": channel.unit}
        return out


def _counters(link: Link) -> dict[str, Any]:
    counters: dict[str, Any] = {
        k: v for k, v in link.decoder.counters().items() if not isinstance(v, float)
    }
    counters["link_opens"] = link.stats.opens
    counters["link_losses"] = link.stats.losses
    ble = getattr(link, "ble", None)
    if ble is not None:
        counters.update({f"ble_{k}": v for k, v in vars(ble).items()})
    return counters


_ERROR_KEYS = (
    "crc_errors",
    "resyncs",
    "malformed",
    "oversize",
    "incomplete_samples",
    "garbage_bytes",
    "bad_lines",
    "length_errors",
    "out_of_range",
    "bad_notifications",
    "seq_gaps",
    "frames_lost",
    "duplicates",
    "link_losses",
)


def _format_values(values: dict[str, dict[str, Any]]) -> str:
    return "  ".join(f"{k}={v['value']:+.4g} {v['unit']}".rstrip() for k, v in values.items())


@sensors_app.command("test")
def sensor_test(
    target: Annotated[
        str, typer.Argument(help="Configured sensor NAME, serial PORT or BLE ADDRESS.")
    ],
    profile: ProfileOption = None,
    rate: RateOption = None,
    baudrate: BaudOption = None,
    seconds: SecondsOption = None,
    config: ToolConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Connect to one sensor; show live rate, latest values and error counters.

    Runs until Ctrl-C or --seconds. With --json, prints one summary object at the end.
    Exit code 1 when no sample arrived. Stop the daemon first if it holds the port.
    """
    sensor = resolve_target(target, config, profile, rate, baudrate)
    monitor = Monitor()
    link = _open_link(sensor, monitor)
    where = getattr(sensor, "port", None) or getattr(sensor, "address", None) or sensor.name
    protocol = sensor.profile.protocol
    if not as_json:
        typer.echo(f"testing {sensor.name}: {sensor.link} {where}, profile {protocol}")

    def tick(elapsed: float) -> None:
        if as_json:
            return
        counters = _counters(link)
        errors = " ".join(f"{k}={counters[k]}" for k in _ERROR_KEYS if counters.get(k))
        values = _format_values(monitor.values())
        state = monitor.state if monitor.state != "lost" else f"lost ({monitor.detail})"
        typer.echo(
            f"[{elapsed:5.1f}s] {state}  {monitor.rate_hz():6.1f} Hz  samples {monitor.samples}"
            f"  {values or 'no samples yet'}  errors: {errors or 'none'}"
        )

    try:
        link.start()
        elapsed = _run_for(seconds, tick)
    finally:
        link.close()
    summary = _summary(sensor, where, link, monitor, elapsed)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if not monitor.samples:
        raise typer.Exit(EXIT_NO_DATA)


def _summary(
    sensor: Any, where: str, link: Link, monitor: Monitor, elapsed: float
) -> dict[str, Any]:
    hello = monitor.hello.get(0)
    decoder = link.decoder.counters()
    rate = monitor.samples / elapsed if elapsed > 0 else 0.0
    summary: dict[str, Any] = {
        "sensor": sensor.name,
        "link": sensor.link,
        "where": where,
        "profile": sensor.profile.protocol,
        "state": monitor.state,
        "detail": monitor.detail,
        "seconds": round(elapsed, 3),
        "samples": monitor.samples,
        "rate_hz": round(monitor.rate_hz() or rate, 3),
        "device": None
        if hello is None
        else {
            "device_id": hello.device_id,
            "firmware": hello.firmware,
            "declared_rate_hz": hello.sample_rate_hz,
            "channels": [c.name for c in hello.channels],
        },
        "latest": monitor.values(),
        "errors": _counters(link) | {"malformed_payloads": monitor.malformed},
        "events": monitor.events,
    }
    if monitor.status is not None:
        summary["status"] = monitor.status
    if "measured_rate_hz" in decoder:
        summary["device_rate_hz"] = decoder.get("rate_hz")
    fields = getattr(link.decoder, "last_fields", None)
    if fields:
        summary["fields"] = fields  # the last packet's fields as sent (struct profiles)
    temperature = getattr(link.decoder, "temperature_c", None)
    if temperature is not None:
        summary["temperature_c"] = temperature
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    typer.echo(
        f"summary: {summary['samples']} samples in {summary['seconds']:.1f} s "
        f"({summary['rate_hz']:.1f} Hz), state {summary['state']}"
    )
    if summary["device"]:
        d = summary["device"]
        typer.echo(
            f"device: {d['device_id']} firmware {d['firmware']}, declared "
            f"{d['declared_rate_hz']:g} Hz, channels {', '.join(d['channels'])}"
        )
    for name, v in summary["latest"].items():
        typer.echo(f"  {name:>8} {v['value']:+12.5f} {v['unit']}")
    if summary.get("fields"):
        raw = "  ".join(f"{k}={v:g}" for k, v in summary["fields"].items())
        typer.echo(f"last packet as sent: {raw}")
    errors = {k: v for k, v in summary["errors"].items() if v}
    typer.echo("counters: " + (" ".join(f"{k}={v}" for k, v in errors.items()) or "all zero"))
    if not summary["samples"]:
        typer.echo(
            f"no samples from {summary['where']}: {summary['detail'] or 'no data'}. Check the "
            "cable or range, the baud rate and the profile (`--profile`).",
            err=True,
        )


# -- sensors scan --------------------------------------------------------------------------------


@sensors_app.command("scan")
def scan(
    seconds: Annotated[float, typer.Option(min=0.5, max=120, help="BLE scan length.")] = 5.0,
    ble: Annotated[bool, typer.Option("--ble/--no-ble", help="Also scan for BLE devices.")] = True,
    adapter: Annotated[str | None, typer.Option(help="Bluetooth adapter, e.g. hci0.")] = None,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe/--no-probe",
            help="Read each serial port for --probe-seconds and say which profile makes sense "
            "of its bytes (v1, witmotion, text). Stop the daemon first: ports are opened "
            "exclusively.",
        ),
    ] = True,
    probe_seconds: Annotated[
        float, typer.Option(min=0.2, max=30, help="How long to read each serial port.")
    ] = 1.0,
    baudrate: Annotated[int, typer.Option(help="Baud rate to probe at.")] = 115_200,
    port: Annotated[
        list[str] | None,
        typer.Option(
            "--port", help="Also probe this serial port (repeat for more).", show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List serial ports (USB ids, stable paths, the profile their bytes make sense as) and BLE
    advertisements (name, address, RSSI, the profile their service names)."""
    from edge_agent.commands.discover import discover, sensor_entries

    result = discover(
        extra_ports=list(port or []),
        probe_seconds=probe_seconds if probe else None,
        baudrate=baudrate,
        ble_seconds=seconds if ble else None,
        adapter=adapter,
    )
    result["sensors"] = sensor_entries(result)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo("serial ports:" if result["serial"] else "serial ports: none found")
    for p in result["serial"]:
        ids = f"{p['vid']}:{p['pid']}" if p["vid"] else "-"
        line = f"  {p['device']}  usb {ids}"
        if p["serial_number"]:
            line += f"  serial {p['serial_number']}"
        if p["description"]:
            line += f"  {p['description']}"
        typer.echo(line)
        for path in p["by_id"]:
            typer.echo(f"    stable path: {path}")
        if p.get("hint"):
            typer.echo(f"    hint: {p['hint']}")
        _echo_recognised(p.get("recognised"))
    if ble:
        result_ble = result["ble"]
        if not result_ble["available"]:
            typer.echo(f"BLE: not available: {result_ble['reason']}")
        else:
            devices = result_ble["devices"]
            typer.echo(f"BLE advertisements ({seconds:g} s): {len(devices) or 'none'}")
            for d in devices:
                services = ", ".join(d["services"]) or "-"
                typer.echo(
                    f"  {d['address']}  {d['rssi']:>4} dBm  {d['name'] or '(no name)'}  {services}"
                )
                if d.get("hint"):
                    typer.echo(f"    hint: {d['hint']}")
                _echo_recognised(d.get("recognised"))
    if result["sensors"]:
        typer.echo("write these with `edge-agent init --scan`, or add them to the config:")
        for entry in result["sensors"]:
            typer.echo("  [[sensors]]")
            for key, value in entry.items():
                typer.echo(f"  {key} = {json.dumps(value)}")


def _echo_recognised(recognised: dict[str, Any] | None) -> None:
    if not recognised:
        return
    if recognised.get("profile"):
        typer.echo(f"    speaks: {recognised['profile']} ({recognised['evidence']})")
    else:
        typer.echo(f"    not recognised: {recognised['reason']}")


# -- record and replay ---------------------------------------------------------------------------


def record(
    target: Annotated[
        str, typer.Argument(help="Configured sensor NAME, serial PORT or BLE ADDRESS.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Capture file to write.")],
    profile: ProfileOption = None,
    rate: RateOption = None,
    baudrate: BaudOption = None,
    seconds: SecondsOption = None,
    config: ToolConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Capture a sensor's raw bytes with receive timestamps, to replay on a desk later.

    The bytes are also decoded while recording, so the summary tells whether the capture
    holds what you expect. Replay it with `edge-agent replay FILE`, or in the daemon with an
    emulated sensor (`link = "emulated"`, `capture = "FILE"`).
    """
    from edge_agent import __version__
    from firmware_bridge.emulator import CaptureWriter

    sensor = resolve_target(target, config, profile, rate, baudrate)
    monitor = Monitor()
    link = _open_link(sensor, monitor)
    header = {
        "format": "edge-agent capture 1",
        "sensor": sensor.name,
        "link": sensor.link,
        "where": getattr(sensor, "port", None) or getattr(sensor, "address", None),
        "profile": sensor.profile.model_dump(mode="json", exclude_none=True),
        "started_wall": time.time(),
        "edge_agent": __version__,
    }
    try:
        writer = CaptureWriter(out, header)
    except OSError as err:
        typer.echo(f"error: cannot write {out}: {err.strerror or err}", err=True)
        raise typer.Exit(EXIT_USAGE) from err
    link.raw_tap = writer.write

    def tick(elapsed: float) -> None:
        if not as_json:
            typer.echo(
                f"[{elapsed:5.1f}s] {monitor.state}  {writer.reads} reads, {writer.bytes} bytes, "
                f"{monitor.samples} samples decoded"
            )

    try:
        link.start()
        elapsed = _run_for(seconds, tick)
    finally:
        link.close()
        writer.close()
    summary = {
        "file": str(out),
        "seconds": round(elapsed, 3),
        "reads": writer.reads,
        "bytes": writer.bytes,
        "samples_decoded": monitor.samples,
        "profile": sensor.profile.protocol,
        "errors": _counters(link),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"wrote {out}: {writer.reads} reads, {writer.bytes} bytes in {elapsed:.1f} s "
            f"({monitor.samples} samples decoded as {sensor.profile.protocol})"
        )
    if not writer.reads:
        typer.echo(f"nothing was received from {header['where']}", err=True)
        raise typer.Exit(EXIT_NO_DATA)


def replay(
    capture: Annotated[Path, typer.Argument(help="Capture file made by `edge-agent record`.")],
    speed: Annotated[float, typer.Option(min=0.01, max=1000, help="Playback speed.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Play once instead of looping.")] = False,
    link_path: Annotated[
        Path | None, typer.Option(help="Also keep a stable symlink to the pty here.")
    ] = None,
    seconds: SecondsOption = None,
) -> None:
    """Play a capture on a pseudo-terminal, with its original timing, like the device itself.

    Prints the tty (and a config snippet) to point the daemon or `sensors test` at.
    """
    from firmware_bridge.emulator import Capture, CaptureError, DeviceEmulator

    try:
        recorded = Capture(capture)
    except OSError as err:  # missing, a directory, unreadable
        typer.echo(
            f"error: {capture}: cannot be read ({err.strerror}); name a capture file made by "
            "`edge-agent record`",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE) from err
    except (CaptureError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USAGE) from err
    try:
        emulator = DeviceEmulator(
            recorded, device_id="replay", speed=speed, loop=not once, link_path=link_path
        )
    except (OSError, CaptureError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USAGE) from err
    recorded_profile = recorded.header.get("profile")
    profile = (
        recorded_profile if isinstance(recorded_profile, dict) else {"protocol": recorded.protocol}
    )
    with emulator:
        port = str(link_path) if link_path is not None else emulator.tty_path
        typer.echo(f"replaying {capture} ({len(recorded)} reads, {recorded.duration_s:.1f} s)")
        if recorded.truncated:
            typer.echo("note: the capture ends inside a record; the partial record is skipped")
        typer.echo(f"tty: {emulator.tty_path}")
        inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in profile.items())
        typer.echo(
            'config:\n  [[sensors]]\n  name = "replay"\n  link = "serial"\n'
            f'  port = "{port}"\n  profile = {{ {inline} }}'
        )
        sys.stdout.flush()
        _run_for(seconds, lambda _elapsed: None)
