"""Every uplink payload as a pydantic model: the MQTT contract of docs/mqtt.md, in code.

A gateway publishes JSON objects on `<root>/<kind>`; each starts with the envelope
(`device`, `seq`, `msg_id`, `ts`) followed by the keys of its kind. These models are the
single description of those keys: `scripts/gen_mqtt_schemas.py` turns them into the JSON
Schemas under `docs/schemas/`, the reference consumer validates what arrives with them, and
the tests validate payloads captured from a real daemon against them.

Evolution rule: new keys may be added to any payload; a consumer ignores keys it does not
know. The models therefore accept unknown keys (`extra="allow"`), and `undocumented_keys`
names them, so a key the gateway sends but these models do not describe is caught by the
tests instead of going unnoticed. Event bodies are open by design: each event kind adds its
own keys (listed in docs/mqtt.md), so keys beyond the common ones are not undocumented.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import EdgeAgentError

NAME = r"^[A-Za-z0-9._-]+$"
"""Identifiers (device, tenant, site, sensor names) as the gateway's config allows them."""


class PayloadError(EdgeAgentError, ValueError):
    """A received payload does not match the contract.

    Attributes:
        kind: The topic kind it arrived on (`status`, `events`, ...).
        problems: One line per problem, each naming the key path and what was expected.
    """

    def __init__(self, kind: str, problems: list[str]) -> None:
        self.kind = kind
        self.problems = problems
        super().__init__(f"{kind} payload: " + "; ".join(problems))


class _Part(BaseModel):
    """Base of every payload model and of the objects nested in them.

    Strict: a number sent as a string, or a boolean where a count belongs, is a contract
    violation rather than something to coerce. Unknown keys are kept (forward compatibility)
    and reported by `undocumented_keys`.
    """

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    OPEN: ClassVar[bool] = False
    """True when keys beyond the declared ones are part of the design (event bodies)."""


class Envelope(_Part):
    """The keys every uplink payload starts with."""

    device: str = Field(min_length=1, pattern=NAME, description="`device.id` of the gateway.")
    seq: int = Field(
        ge=1,
        description="Per topic, +1 per message, starting at 1. Allocated in the SQLite "
        "transaction that stores the message: never repeats and never skips across "
        "restarts, except for ranges announced as dropped by an `outbox.evicted` event.",
    )
    msg_id: str = Field(
        pattern=r"^[0-9a-f]{32}$",
        description="Fixed when the message is created and identical on every re-send: a "
        "consumer that sees it twice has a duplicate (QoS 1 is at-least-once).",
    )
    ts: float = Field(gt=0, description="Creation time of the message, Unix seconds.")


# -- status -------------------------------------------------------------------------------------


class StatusPayload(Envelope):
    """`<root>/status` (retained): birth on every connect, last will and clean stop."""

    seq: int = Field(
        ge=1,
        description="Numbers accepted connections: the `online` and the `offline` of one "
        "connection share it, later connections carry higher ones, and numbers may be "
        "skipped. It never goes back.",
    )

    state: Literal["online", "offline"] = Field(
        description="`online` on connect (birth); `offline` on clean stop or as the last will."
    )
    tenant: str = Field(min_length=1, pattern=NAME, description="`device.tenant`.")
    site: str = Field(min_length=1, pattern=NAME, description="`device.site`.")


# -- events -------------------------------------------------------------------------------------


class EventPayload(Envelope):
    """`<root>/events`: something happened. Keys beyond these form the event's body."""

    OPEN: ClassVar[bool] = True

    event: str = Field(
        pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$",
        description="Dotted event kind, e.g. `sensor.connected`, `outbox.evicted`.",
    )
    severity: Literal["info", "warning", "error"] = Field(description="How bad it is.")
    sensor: str | None = Field(
        description="Sensor (or `<sensor>.<stream>`) it concerns; null for gateway-wide events."
    )
    event_ts: float = Field(gt=0, description="When it happened, Unix seconds.")


class OutboxEvictedBody(_Part):
    """Body of an `outbox.evicted` event: queued messages dropped by the disk or age policy.

    A consumer subtracts the announced range from its gap accounting: those sequence numbers
    were dropped on purpose, not lost. The notice itself is never evicted.
    """

    topic: Literal["events", "heartbeat", "summary", "results"] = Field(
        description="Topic kind whose messages were dropped."
    )
    seq_from: int = Field(ge=1, description="First sequence number dropped.")
    seq_to: int = Field(ge=1, description="Last sequence number dropped.")
    messages: int = Field(
        ge=1,
        description="Messages dropped; at most `seq_to - seq_from + 1` (the range may "
        "contain messages already delivered).",
    )
    reason: str = Field(description="Why: `max_age`, `disk cap`.")

    @model_validator(mode="after")
    def _range(self) -> OutboxEvictedBody:
        if self.seq_to < self.seq_from:
            raise ValueError(f"seq_to {self.seq_to} is below seq_from {self.seq_from}")
        if self.messages > self.seq_to - self.seq_from + 1:
            raise ValueError(
                f"{self.messages} messages cannot fit seq {self.seq_from}..{self.seq_to}"
            )
        return self


EVENT_BODIES: dict[str, type[_Part]] = {"outbox.evicted": OutboxEvictedBody}
"""Event kinds a consumer acts on, with the model their body is checked against."""


# -- heartbeat ----------------------------------------------------------------------------------


class SensorHealth(_Part):
    """Health of one configured sensor."""

    link: str = Field(description="Link kind: `serial`, `ble`, `emulated`.")
    state: Literal["connected", "disconnected", "disabled"] = Field(description="Link state.")
    seconds_since_data: float | None = Field(
        ge=0, description="Seconds since the last sample; null before the first."
    )
    samples: int = Field(ge=0, description="Samples received since start.")
    frames_lost: int = Field(ge=0, description="Frames missing from the device's sequence.")
    gaps: int = Field(ge=0, description="Sequence gaps seen.")
    crc_errors: int = Field(ge=0, description="Frames dropped for a bad CRC.")
    resyncs: int = Field(ge=0, description="Times the decoder re-synchronised on a frame start.")
    windows_dropped: int = Field(
        ge=0, description="Windows not run because their samples were not contiguous."
    )
    hellos_rejected: int = Field(
        default=0,
        ge=0,
        description="HELLO frames refused since start: malformed, or announcing a sample rate, "
        "channels or scales that make no sense (docs/protocol.md §3).",
    )
    input_rejected: int = Field(
        default=0,
        ge=0,
        description="Input the sensor's profile refused since its link was opened (at start or "
        "by a reload): text lines, "
        "struct packets or notifications whose field count, length or values make no sense "
        "(checksum failures are crc_errors); each new kind is also a sensor.rejected event.",
    )
    samples_before_hello: int = Field(
        default=0,
        ge=0,
        description="Samples received since start before any valid HELLO announced their "
        "layout, so dropped undecoded (a device that streams before announcing itself).",
    )
    models: dict[str, str] = Field(
        description="Each model reference configured for the sensor → `ok` or why it is not "
        "running."
    )


class StoreHealth(_Part):
    """The SQLite writer's counters."""

    commits: int = Field(ge=0, description="Transactions committed since start.")
    failed_commits: int = Field(ge=0, description="Commits that failed and were retried.")
    last_error: str | None = Field(description="The last store error; null once writes succeed.")
    disk_full: bool = Field(
        description="The disk (or the database's hard cap) is full: from the first write that "
        "failed with SQLITE_FULL until writes succeed and the space reserve is back. Writes are "
        "retried after an emergency eviction; nothing queued is dropped meanwhile."
    )
    quarantined: int = Field(
        default=0,
        ge=0,
        description="Rows moved to the `quarantine` table since start: read back from the "
        "store and unusable (a NULL, NaN or text where a number belongs, a payload that is "
        "not JSON), or a body JSON cannot carry. Each is announced by a `store.quarantined` "
        "event.",
    )
    dropped: dict[str, int] = Field(
        description="Everything dropped by the size and age policy since the database was "
        "created, by class (`results.history`, `outbox.results`, ...; see docs/reliability.md)."
    )
    delivered: int = Field(
        default=0,
        ge=0,
        description="Acknowledged messages kept so a consumer can ask for them again "
        "(`sync.resend`; `sync.keep_delivered_s`), as of the last retention pass (every 10 s).",
    )


class RefusedTopic(_Part):
    """A topic whose publishes the broker refuses (MQTT 5 PUBACK reason code >= 0x80)."""

    reason: str = Field(description="The broker's reason, e.g. `Not authorized`.")
    refusals: int = Field(ge=1, description="Refused publishes of this topic in this episode.")
    since: float = Field(gt=0, description="When the first refusal came, Unix seconds.")
    retry_in_s: float = Field(
        ge=0, description="Seconds until one message is sent again as a probe."
    )


class BrokerNode(_Part):
    """What the gateway knows of one broker node (`mqtt.hosts`, or `mqtt.host:port`)."""

    failures: int = Field(
        ge=0,
        description="Failed connects and lost sessions in a row; 0 once a CONNACK accepts one.",
    )
    connects: int = Field(ge=0, description="Sessions accepted by this node since start.")
    last_failure: float | None = Field(description="When it last failed, Unix seconds; or null.")
    last_success: float | None = Field(
        description="When it last accepted a session, Unix seconds; or null."
    )
    last_error: str | None = Field(description="Its last failure; null once it accepted one.")


class MqttHealth(_Part):
    """The uplink's counters."""

    connected: bool = Field(description="Whether the MQTT session is up.")
    published: int = Field(ge=0, description="Messages published since start.")
    acked: int = Field(ge=0, description="PUBACKs received since start.")
    last_error: str | None = Field(description="The last uplink error; null once connected.")
    protocol: Literal["5", "3.1.1"] | None = Field(
        default=None,
        description="MQTT version of the current (or last) session; null before the first.",
    )
    protocol_fallback: bool = Field(
        default=False,
        description='`mqtt.protocol = "auto"` runs 3.1.1 because this broker refused MQTT 5 '
        "(remembered per broker; what degrades: docs/mqtt.md).",
    )
    host: str | None = Field(
        default=None,
        description="`host:port` of the broker node of the current (or last) session; null "
        "before the first.",
    )
    hosts: dict[str, BrokerNode] = Field(
        default_factory=dict,
        description="With several broker nodes (`mqtt.hosts`), every one, by `host:port`, in "
        "the configured order: what the gateway knows of it (failover: docs/mqtt.md); empty "
        "with one node.",
    )
    refusals: int = Field(
        default=0,
        ge=0,
        description="Publishes the broker refused since start (MQTT 5 only: a 3.1.1 broker "
        "acknowledges a publish it drops).",
    )
    refused: dict[str, RefusedTopic] = Field(
        default_factory=dict,
        description="Topics refused now, by topic: their messages stay in the outbox (left "
        "only to the disk cap's eviction) and one is retried as a probe with capped backoff; "
        "empty while the broker accepts everything.",
    )
    resent: int = Field(
        default=0,
        ge=0,
        description="Delivered messages queued again by `sync.resend` since start.",
    )
    resend_requests: int = Field(
        default=0, ge=0, description="`sync.resend` requests answered since start."
    )
    announces: int = Field(
        default=0,
        ge=0,
        description="Messages on `<prefix>/announce` answered (birth again, heartbeat now) "
        "since start; more within 10 s are ignored.",
    )


class GatewayHealth(_Part):
    """Whether the gateway works as configured, and if not, why."""

    state: Literal["healthy", "degraded"] = Field(description="`degraded` while any reason holds.")
    degraded: list[str] = Field(
        description="Why it is degraded (`disk full`, `config reverted`, ...); empty when healthy."
    )


class ComponentHealth(_Part):
    """One supervised component (its own failure domain; see docs/architecture.md)."""

    state: Literal["starting", "running", "restarting", "stopped"] = Field(
        description="`restarting` while it waits out its backoff after a failure."
    )
    restarts: int = Field(ge=0, description="Failures since start (each followed by a restart).")
    last_error: str | None = Field(description="The last failure, `Type: message`; null if none.")
    last_failure: float | None = Field(description="When it last failed, Unix seconds; or null.")


class HeartbeatPayload(Envelope):
    """`<root>/heartbeat`: health figures every `sync.heartbeat_interval_s`."""

    version: str = Field(min_length=1, description="edge-agent version.")
    uptime_s: float = Field(ge=0, description="Seconds since the process started.")
    cpu_s: float = Field(ge=0, description="CPU seconds used by the process (user + system).")
    rss_mb: float = Field(ge=0, description="Resident memory in MB.")
    sensors: dict[str, SensorHealth] = Field(description="Per configured sensor, by name.")
    windows_committed: int = Field(ge=0, description="Window results committed since start.")
    outbox_depth: int = Field(ge=0, description="Messages waiting in the outbox.")
    store: StoreHealth = Field(description="SQLite store counters.")
    mqtt: MqttHealth = Field(description="Uplink counters.")
    health: GatewayHealth | None = Field(
        default=None, description="Healthy or degraded, with the reasons."
    )
    components: dict[str, ComponentHealth] | None = Field(
        default=None,
        description="Supervised components that failed since start, by name (`pipeline`, "
        "`mqtt`, `heartbeat`, `stream:<name>`, ...): state, restarts, last failure; empty "
        "while none did (`status` lists them all).",
    )
    config_guard: dict[str, Any] | None = Field(
        default=None,
        description="The config guard: `file`, the last `good` copy, `confirmed_at` (when the "
        "broker last confirmed it), `awaiting_broker`, a `fallback` or `reverted` in effect; "
        "null on a gateway running its embedded default (see operations.md).",
    )


# -- summary ------------------------------------------------------------------------------------


class SummaryPayload(Envelope):
    """`<root>/summary`: one per sensor and model per `sync.summary_interval_s`."""

    sensor: str = Field(min_length=1, description="Sensor (or `<sensor>.<stream>`) name.")
    model: str = Field(min_length=1, description="Model name.")
    model_version: str = Field(min_length=1, description="Model version.")
    interval_start: float = Field(gt=0, description="Interval start, Unix seconds.")
    interval_end: float = Field(gt=0, description="Interval end, Unix seconds.")
    windows_processed: int = Field(ge=0, description="Windows run in the interval.")
    windows_dropped: int = Field(
        ge=0, description="Windows not run because their samples were not contiguous."
    )
    label_counts: dict[str, int] = Field(description="Windows per output label.")
    label_distribution: dict[str, float] = Field(
        description="Share of windows per label (empty when no window ran)."
    )
    top_label: str | None = Field(description="Most frequent label; null when no window ran.")
    anomaly_count: int | None = Field(
        default=None,
        ge=0,
        description="Windows an anomaly detector flagged; null for other models.",
    )
    mean_confidence: float | None = Field(
        description="Mean confidence of the decisions (0..1 for the shipped models); null "
        "when no window ran."
    )
    latency_ms_p50: float | None = Field(
        ge=0, description="Median window close → result committed, ms."
    )
    latency_ms_p99: float | None = Field(
        ge=0, description="99th percentile window close → result committed, ms."
    )
    partial: bool = Field(
        default=False, description="True for the last, shortened interval before a stop."
    )

    @model_validator(mode="after")
    def _interval(self) -> SummaryPayload:
        if self.interval_end < self.interval_start:
            raise ValueError(
                f"interval_end {self.interval_end} is before interval_start {self.interval_start}"
            )
        return self


# -- results ------------------------------------------------------------------------------------


class ResultWindows(_Part):
    """Columns of per-window decisions, all of length `count`, in window order."""

    t_start: list[float] = Field(description="Window start, host wall-clock Unix seconds.")
    t_end: list[float] = Field(description="Window end, host wall-clock Unix seconds.")
    label: list[str | None] = Field(
        description="Decided label (null for a model without label names)."
    )
    confidence: list[float] = Field(
        description="Score of the decided label (a probability, 0..1, for the shipped models)."
    )


class ResultsPayload(Envelope):
    """`<root>/results`: `count` windows of one sensor and one model version, columnar."""

    sensor: str = Field(min_length=1, description="Sensor (or `<sensor>.<stream>`) name.")
    model: str = Field(min_length=1, description="Model name.")
    model_version: str = Field(min_length=1, description="Model version.")
    count: int = Field(ge=1, description="Windows in this message.")
    windows: ResultWindows = Field(description="The windows, one column per field.")

    @model_validator(mode="after")
    def _columns(self) -> ResultsPayload:
        w = self.windows
        lengths = {
            "t_start": len(w.t_start),
            "t_end": len(w.t_end),
            "label": len(w.label),
            "confidence": len(w.confidence),
        }
        wrong = {k: n for k, n in lengths.items() if n != self.count}
        if wrong:
            raise ValueError(f"windows columns {wrong} do not have count={self.count} entries")
        return self


PAYLOADS: dict[str, type[Envelope]] = {
    "status": StatusPayload,
    "events": EventPayload,
    "heartbeat": HeartbeatPayload,
    "summary": SummaryPayload,
    "results": ResultsPayload,
}
"""The model of each topic kind, in the order docs/mqtt.md lists them."""

KINDS = tuple(PAYLOADS)


# -- decoding and validation --------------------------------------------------------------------


def decode_payload(raw: bytes, content_encoding: str | None = None, kind: str = "uplink") -> Any:
    """The JSON value of a payload as published, undoing optional zlib compression.

    Compressed payloads (`mqtt.compress_results`) carry the MQTT 5 user property
    `content-encoding=zlib`; a payload starting with a zlib header is inflated even without
    it (JSON text never starts with that byte), so a consumer behind a bridge that drops user
    properties still reads it.

    Args:
        raw: The payload bytes as received.
        content_encoding: The message's `content-encoding` user property, if any.
        kind: The topic kind, for error messages.

    Raises:
        PayloadError: not zlib-inflatable when it says so, not UTF-8, or not JSON.
    """
    data = raw
    if content_encoding not in (None, "", "identity", "zlib"):
        raise PayloadError(kind, [f"unsupported content-encoding {content_encoding!r}"])
    if content_encoding == "zlib" or raw[:1] == b"\x78":
        try:
            data = zlib.decompress(raw)
        except zlib.error as err:
            raise PayloadError(kind, [f"zlib payload does not inflate: {err}"]) from err
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise PayloadError(kind, [f"not UTF-8 JSON: {err}"]) from err


def _problems(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "<payload>"
        out.append(f"{where}: {e['msg']}")
    return out


def parse_payload(kind: str, message: Any) -> Envelope:
    """Validate one decoded payload against the model of its topic kind.

    Args:
        kind: The last topic level (`status`, `events`, `heartbeat`, `summary`, `results`).
        message: The decoded JSON value (see `decode_payload`).

    Raises:
        PayloadError: unknown kind, not a JSON object, or keys that break the contract; the
            message names every offending key path.
    """
    model = PAYLOADS.get(kind)
    if model is None:
        raise PayloadError(kind, [f"unknown topic kind; expected one of {', '.join(KINDS)}"])
    if not isinstance(message, Mapping):
        raise PayloadError(kind, [f"payload is a JSON {type(message).__name__}, not an object"])
    try:
        payload = model.model_validate(message)
    except ValidationError as err:
        raise PayloadError(kind, _problems(err)) from err
    if isinstance(payload, EventPayload):
        body_model = EVENT_BODIES.get(payload.event)
        if body_model is not None:
            try:
                body_model.model_validate(payload.model_extra or {})
            except ValidationError as err:
                raise PayloadError(
                    kind, [f"{payload.event} body: {p}" for p in _problems(err)]
                ) from err
    return payload


def event_body(payload: EventPayload) -> dict[str, Any]:
    """The event-specific keys of an event (everything after the common ones)."""
    return dict(payload.model_extra or {})


def undocumented_keys(part: BaseModel, path: str = "") -> list[str]:
    """Key paths present in a validated payload that its model does not describe.

    Event bodies (`OPEN` models) are by design not listed, except that the body of an event
    kind in `EVENT_BODIES` is held to its model.
    """
    found: list[str] = []
    extra = part.model_extra or {}
    if isinstance(part, EventPayload):
        body_model = EVENT_BODIES.get(part.event)
        if body_model is not None:
            declared = set(body_model.model_fields)
            found += [f"{path}{k}" for k in extra if k not in declared]
    elif not getattr(part, "OPEN", False):
        found += [f"{path}{k}" for k in extra]
    for name in type(part).model_fields:
        value = getattr(part, name)
        if isinstance(value, BaseModel):
            found += undocumented_keys(value, f"{path}{name}.")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, BaseModel):
                    found += undocumented_keys(item, f"{path}{name}.{key}.")
    return found


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12) of each topic kind's payload, by kind."""
    out: dict[str, dict[str, Any]] = {}
    for kind, model in PAYLOADS.items():
        schema = model.model_json_schema(mode="validation")
        out[kind] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    # Event kinds with a fixed body: "if event is X then the object also matches X's body".
    events = out["events"]
    defs = events.setdefault("$defs", {})
    rules = []
    for name, body in EVENT_BODIES.items():
        defs[body.__name__] = body.model_json_schema(mode="validation")
        rules.append(
            {
                "if": {"properties": {"event": {"const": name}}, "required": ["event"]},
                "then": {"$ref": f"#/$defs/{body.__name__}"},
            }
        )
    events["allOf"] = rules
    return out
