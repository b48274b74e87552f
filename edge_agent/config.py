"""Configuration: one TOML file validated by pydantic, overridable from the environment.

Every model forbids unknown keys and describes every field, so `config validate`
can name the exact key path of a mistake and `config show` documents itself.
Environment overrides use `EDGE_AGENT_<SECTION>__<KEY>` (list items by index:
`EDGE_AGENT_SENSORS__0__PORT`).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.config_sensors import (
    BleSensorConfig,
    EmulatedSensorConfig,
    SensorBase,
    SensorConfig,
    SerialSensorConfig,
    default_sensors,
)
from edge_agent.config_sources import (
    ENV_PREFIX,
    ENV_SEPARATOR,
    apply_env,
    read_config_file,
    variable_for,
)
from edge_agent.config_types import FilePath, Host, Section
from edge_agent.errors import ConfigError, ConfigIssue
from edge_agent.sync.hosts import MAX_HOSTS, Node, parse_node
from firmware_bridge.profiles import available_profiles

__all__ = [
    "AgentConfig",
    "BleSensorConfig",
    "BrokerKind",
    "CommandsConfig",
    "DeviceConfig",
    "EmulatedSensorConfig",
    "FacesConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelsConfig",
    "MqttConfig",
    "OtaConfig",
    "Section",
    "SensorBase",
    "SensorConfig",
    "SerialSensorConfig",
    "ServiceConfig",
    "StorageConfig",
    "SyncConfig",
    "apply_env_overrides",
    "load_config",
    "parse_config",
    "render_config",
]


def _default_device_id() -> str:
    return socket.gethostname() or "gateway"


class DeviceConfig(Section):
    """Identity of this gateway; it names the MQTT topics."""

    id: str = Field(
        default_factory=_default_device_id,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Gateway id, unique within the tenant (default: the host name).",
    )
    tenant: str = Field(
        default="default",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Tenant id (1..128 characters).",
    )
    site: str = Field(
        default="default",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Site id (1..128 characters).",
    )


BrokerKind = Literal[
    "generic",
    "mosquitto",
    "nats",
    "rabbitmq",
    "emqx",
    "hivemq",
    "vernemq",
    "aws-iot-core",
    "azure-iot-hub",
]
"""The brokers whose rules `edge_agent.brokers` knows (`mqtt.broker`)."""


class MqttConfig(Section):
    """Connection to the MQTT broker that carries telemetry to the cloud."""

    host: Host = Field(
        default="127.0.0.1",
        max_length=253,
        description="Broker host name or address; not empty, no spaces.",
    )
    port: int = Field(
        default=1883,
        ge=1,
        le=65535,
        description="Broker TCP port (also of every `hosts` entry that names no port).",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="Broker cluster nodes, tried in turn when a connection fails or is lost "
        f"(see docs/mqtt.md, Failover): up to {MAX_HOSTS} distinct `host`, `host:port` or "
        "`[v6addr]:port` entries (or one comma-separated string). Empty: `host` and `port` "
        "alone.",
    )
    topic_prefix: str = Field(
        default="edge",
        min_length=1,
        max_length=256,
        pattern=r"^[^#+\x00]+$",
        description="First topic level; topics are <prefix>/<tenant>/<site>/<device>/<kind>.",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description="MQTT protocol version: `auto` (MQTT 5, falling back to 3.1.1 when the "
        "broker refuses the version; remembered per broker), `5` or `3.1.1`.",
    )
    broker: BrokerKind = Field(
        default="generic",
        description="The broker this gateway talks to, when known: `config validate` then fails "
        "on values it refuses (a '.' in an id for NATS, long topics for AWS IoT Core; see "
        "docs/brokers.md) and the daemon warns at start. `generic`: such values are warnings "
        "naming the broker.",
    )
    client_id: str | None = Field(
        default=None,
        max_length=256,
        description="MQTT client id (default: edge-agent-<tenant>-<device.id>).",
    )
    username: str | None = Field(
        default=None, max_length=256, description="User name for broker authentication."
    )
    password: SecretStr | None = Field(
        default=None, description="Password for broker authentication (never logged or shown)."
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")
    max_inflight: int = Field(
        default=64, ge=1, le=65535, description="QoS 1 messages awaiting PUBACK at once."
    )
    reconnect_min_s: float = Field(
        default=0.5,
        ge=0.01,
        le=3600,
        description="First reconnect delay, 0.01..3600 s; doubles per failure (jittered).",
    )
    reconnect_max_s: float = Field(
        default=30.0, ge=0.01, le=3600, description="Cap of the reconnect delay, 0.01..3600 s."
    )
    max_messages_per_s: float = Field(
        default=500.0,
        ge=1,
        le=1e9,
        description="Drain rate limit, at least 1 message/s, so a fleet reconnecting after an "
        "outage does not storm the broker (token bucket; bursts up to max_inflight).",
    )
    password_file: FilePath | None = Field(
        default=None,
        description="File holding the broker password (first line); wins over `password`.",
    )
    tls: bool = Field(default=False, description="Connect with TLS, verifying the server.")
    ca_file: FilePath | None = Field(
        default=None, description="CA bundle that signed the broker's certificate (PEM)."
    )
    cert_file: FilePath | None = Field(
        default=None, description="Client certificate for mutual TLS (PEM)."
    )
    key_file: FilePath | None = Field(default=None, description="Client private key (PEM).")
    require_tls: bool = Field(
        default=False, description="Refuse to start with a plaintext broker connection."
    )
    compress_results: bool = Field(
        default=False,
        description="zlib-compress `results` payloads (MQTT 5 only; marked with the user "
        "property content-encoding=zlib).",
    )

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts_text(cls, value: Any) -> Any:
        # One string (an environment variable, `config set`) lists the nodes with commas.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts_sense(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if len(value) > MAX_HOSTS:
            raise ValueError(f"{len(value)} entries; at most {MAX_HOSTS} broker nodes")
        port = info.data.get("port", 1883)
        seen: dict[Node, int] = {}
        for i, text in enumerate(value):
            try:
                node = parse_node(text, port)
            except ValueError as err:
                raise ValueError(f"entry {i}: {err}") from None
            key = Node(node.host.lower(), node.port)
            if key in seen:
                raise ValueError(
                    f"entry {i} ({text!r}) is the same node as entry {seen[key]} "
                    f"({value[seen[key]]!r}); list each node once"
                )
            seen[key] = i
        return value

    @model_validator(mode="after")
    def _tls_consistent(self) -> MqttConfig:
        if self.require_tls and not self.tls:
            raise ValueError("require_tls is set but tls is false: set mqtt.tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both cert_file and key_file")
        if self.compress_results and self.protocol == "3.1.1":
            raise ValueError("compress_results needs MQTT 5 (protocol = '5' or 'auto')")
        return self

    @model_validator(mode="after")
    def _one_host_setting(self) -> MqttConfig:
        # With a list, `host` is unused: one that is not in the list is a mistake to name.
        if self.hosts and "host" in self.model_fields_set:
            nodes = {Node(n.host.lower(), n.port) for n in self.nodes()}
            if Node(self.host.lower(), self.port) not in nodes:
                raise ValueError(
                    f"host {self.host!r} is not in hosts: with hosts set, host is not used; "
                    "remove it or add it to hosts"
                )
        return self

    def nodes(self) -> list[Node]:
        """The broker nodes to use, in order: `hosts`, or `host:port` when it is empty."""
        if not self.hosts:
            return [Node(self.host, self.port)]
        return [parse_node(text, self.port) for text in self.hosts]

    def secret(self) -> str | None:
        """The password, from `password_file` or `password`; never logged."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").splitlines()[0]
            except (OSError, IndexError, UnicodeDecodeError) as err:
                raise ConfigError(
                    str(self.password_file),
                    [ConfigIssue("mqtt.password_file", f"unreadable: {err}")],
                ) from err
        return self.password.get_secret_value() if self.password else None


class SyncConfig(Section):
    """What goes upstream and how often."""

    heartbeat_interval_s: float = Field(
        default=30.0,
        ge=1,
        le=86_400,
        description="Seconds between heartbeats, 1..86400 (shorter would flood the broker).",
    )
    summary_interval_s: float = Field(
        default=60.0,
        ge=1,
        le=86_400,
        description="Length of each per-sensor summary interval, 1..86400 s (one message per "
        "sensor and model per interval).",
    )
    results_interval_s: float = Field(
        default=1.0,
        ge=0.1,
        le=3600,
        description="Window results are batched into one message this often, 0.1..3600 s.",
    )
    results_per_message: int = Field(
        default=500, ge=1, le=100_000, description="Most window results in one message."
    )
    upload_results: bool = Field(
        default=False,
        description="Also send every window result upstream (`results` topic); by default "
        "results stay on the gateway and summaries, events and heartbeats go up.",
    )
    keep_delivered_s: float = Field(
        default=86_400.0,
        ge=0,
        le=3_153_600_000,
        description="Keep messages the broker acknowledged this long, 0..3153600000 s, so a "
        "consumer that lost some can ask for them again (`sync.resend`, docs/mqtt.md); "
        "0: delete on acknowledgement. Bounded by storage.max_bytes and max_age_days (about "
        "8 MB a day at the default cadence, docs/reliability.md).",
    )


class StorageConfig(Section):
    """The local SQLite store: results, summaries, events and the outbox."""

    path: FilePath = Field(
        default=Path("edge-agent.db"), description="SQLite database file (not empty)."
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL",
        description="NORMAL survives a process crash; FULL also survives power loss (slower).",
    )
    max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        le=1 << 50,
        description="Cap of the database's used size (1 MiB..1 PiB); above it the oldest "
        "data is evicted in the documented order (docs/reliability.md).",
    )
    max_age_days: float = Field(
        default=30.0,
        ge=0.01,
        le=36_500,
        description="Local history and unsent messages older than this go (0.01..36500 days).",
    )
    commit_interval_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="Extra time to gather writes before a commit (0: commit as soon as idle).",
    )
    reserve_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        le=1024 * 1024 * 1024,
        description="Space held in a file next to the database (`<path>.reserve`) and "
        "released when the disk is full, so eviction has room to run (0: none).",
    )

    @field_validator("path")
    @classmethod
    def _names_a_file(cls, value: Path) -> Path:
        """The socket, `-wal` and `.reserve` files are named after it: "/" or "." has no name."""
        if value.name in ("", ".", ".."):
            raise ValueError(
                f"{str(value)!r} is a directory, not a file; name the database file in it "
                "(e.g. /var/lib/edge-agent/edge-agent.db)"
            )
        return value


class ModelsConfig(Section):
    """Where model bundles are found."""

    dirs: list[FilePath] = Field(
        default_factory=list,
        description="Directories holding <name>/<version>/manifest.json bundles, searched in "
        "order before the bundles shipped with edge-agent.",
    )


class OtaConfig(Section):
    """Over-the-air model updates: who may sign them, where they go, how they are judged."""

    trusted_keys: list[str] = Field(
        default_factory=list,
        description="ed25519 public keys (base64 of the 32 raw bytes, as `edge-agent models "
        "keygen` prints them) whose signatures are accepted. List the old and the new key "
        "while rotating. Empty: every update is refused.",
    )
    install_dir: FilePath | None = Field(
        default=None,
        description="Where installed versions and the active-version state live "
        "(<install_dir>/<name>/<version>/); default: `ota/` beside the database.",
    )
    allow_http: bool = Field(
        default=False,
        description="Accept plain http:// URLs (the signature still protects the content, but "
        "not against replay or eavesdropping). https and file:// are always accepted.",
    )
    ca_file: FilePath | None = Field(
        default=None,
        description="CA bundle (PEM) that verifies https download servers; default: the "
        "system's CA store.",
    )
    max_bundle_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=1 << 40,
        description="Largest bundle archive accepted, and the largest total size of its "
        "unpacked files.",
    )
    inline_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=1 << 32,
        description="Largest bundle accepted in chunks over MQTT (`model.chunk`), for sites "
        "without https access.",
    )
    download_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Socket timeout of a download."
    )
    download_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Attempts per deployment when the connection breaks; each resumes where "
        "the last one stopped.",
    )
    keep_versions: int = Field(
        default=3,
        ge=2,
        le=50,
        description="Installed versions kept per model (the active one included); older "
        "ones are removed after a successful probation.",
    )
    latency_budget_ms: float = Field(
        default=50.0,
        gt=0,
        le=600_000,
        description="Most a new version may take for one window (median of the staging runs, "
        "and median time per window of its calls during probation).",
    )
    require_golden: bool = Field(
        default=True,
        description="Refuse bundles without golden vectors (inputs with expected outputs); "
        "`edge-agent models pack` adds them.",
    )
    probation_windows: int = Field(
        default=100,
        ge=0,
        le=10_000_000,
        description="Windows a new version must process before it is confirmed (0: no "
        "minimum; at most 10,000,000).",
    )
    probation_s: float = Field(
        default=60.0,
        ge=0,
        le=30 * 86_400,
        description="Seconds a new version stays on probation at least (0: no minimum; at "
        "most 30 days). With "
        "both at 0 a new version is confirmed at once.",
    )
    max_error_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of the new version's inference calls that may fail during "
        "probation (0: any failure rolls back).",
    )
    max_label_drift: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Largest total variation distance between the label distributions of the "
        "new and the previous version on the same probation windows (1: never rolls back).",
    )
    collapse_share: float = Field(
        default=0.98,
        gt=0,
        le=1,
        description="The new version collapsed when one label takes at least this share of "
        "the probation windows while the previous version's top label stayed below it.",
    )

    @model_validator(mode="after")
    def _keys_decode(self) -> OtaConfig:
        import base64
        import binascii

        for i, key in enumerate(self.trusted_keys):
            try:
                raw = base64.b64decode(key.strip(), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    f"trusted_keys[{i}] is not an ed25519 public key (base64 of 32 bytes, as "
                    "`edge-agent models keygen` prints it)"
                )
        return self


class CommandsConfig(Section):
    """Remote commands over MQTT (`<root>/cmd/<name>`)."""

    enabled: bool = Field(default=True, description="Subscribe to remote commands at all.")
    allow: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Commands this gateway accepts, as names or shell-style patterns "
        "('faces.*'); others are answered `forbidden`.",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="Commands refused even when `allow` matches (names or patterns).",
    )
    max_request_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request accepted, in bytes (MQTT payload or control-socket line); "
        "bigger ones are answered `too_large` without being parsed.",
    )
    max_bulk_request_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request of a bulk command: `model.chunk` (a base64 piece of a "
        "bundle; the whole bundle is bounded by ota.inline_max_bytes) and `faces.add` / "
        "`faces.replace` (a batch of templates; send bigger galleries in more batches).",
    )
    rate_per_s: float = Field(
        default=20.0,
        ge=0.1,
        le=10_000,
        description="Requests per second this gateway answers over MQTT, sustained (token "
        "bucket); more are answered `rate_limited` with the seconds to wait.",
    )
    burst: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Requests accepted back to back before `rate_per_s` applies.",
    )

    def permits(self, name: str) -> bool:
        """Whether the command `name` may run here."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.allow) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.deny
        )


class LoggingConfig(Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level logged."
    )
    show_results: bool = Field(
        default=True,
        description="Log every window result (handy on a terminal, noisy in a journal).",
    )


class ServiceConfig(Section):
    """Running as a service: the systemd watchdog and the local control socket."""

    control_socket: FilePath | None = Field(
        default=None,
        description="Unix socket (mode 0660) answering `edge-agent status`, `tail` and `reload`; "
        "default: beside the database, `<storage.path without suffix>.sock`. The systemd "
        "service uses /run/edge-agent/control.sock.",
    )
    stall_timeout_s: float = Field(
        default=10.0,
        ge=0.5,
        le=3600,
        description="Work waiting with no progress for this long (0.5..3600 s) means the "
        "pipeline is stuck: "
        "watchdog pings stop, so systemd restarts the service (idle sensors are not a stall).",
    )
    status_interval_s: float = Field(
        default=5.0,
        ge=0.1,
        le=3600,
        description="How often the one-line state shown by `systemctl status` is refreshed "
        "(0.1..3600 s).",
    )
    config_confirm_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A reload that changes the broker connection must reach the broker "
        "(CONNACK) within this long, or the daemon goes back to the last config that worked "
        "(`config.reverted`); also how long a start must run to count as a clean one.",
    )
    config_crash_limit: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Starts in a row that end without a clean stop before the daemon starts "
        "on the last known good config instead of this one.",
    )


class MetricsConfig(Section):
    """`/metrics` (Prometheus) and `/healthz` over HTTP (docs/monitoring.md)."""

    enabled: bool = Field(default=True, description="Serve /metrics and /healthz.")
    host: Host = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=9108, ge=0, le=65535, description="TCP port (0: any free port).")


class FacesConfig(Section):
    """Face identification against the encrypted gallery (docs/face.md)."""

    enabled: bool = Field(
        default=False,
        description="Embed and identify face crops and embeddings that sensors send "
        "(protocol v1 FACE_CROP / EMBEDDING frames); off: such frames are ignored.",
    )
    model: str = Field(
        default="face-embed-demo",
        description="Embedding bundle, 'name' or 'name@version', found like sensor models. The "
        "shipped face-embed-demo is for tests and demos only, never for real decisions.",
    )
    threshold: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Cosine similarity a match needs; calibrate it for this deployment with "
        "`edge-agent faces calibrate` (default: the value the model bundle suggests).",
    )
    top_k: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Candidates computed per decision; more than 1 adds the runners-up (ids and "
        "scores, never embeddings) to `face.match` / `face.unknown` events.",
    )
    gallery_path: FilePath | None = Field(
        default=None,
        description="Encrypted gallery database (default: beside storage.path, "
        "`<storage.path without suffix>.faces.db`).",
    )
    key_file: FilePath | None = Field(
        default=None,
        description="File (mode 0600) holding the gallery's AES-256 key; unset: the systemd "
        "credential named by `key_credential`. Make one with `edge-agent faces keygen PATH`.",
    )
    key_credential: str = Field(
        default="face-gallery-key",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Name of the systemd credential ($CREDENTIALS_DIRECTORY/<name>) holding the "
        "key when key_file is unset (LoadCredentialEncrypted= in the unit).",
    )
    gallery_dtype: Literal["float32", "float16", "int8"] = Field(
        default="float32",
        description="How the in-memory gallery matrix is held: float32 exact; float16 half the "
        "memory, slower; int8 a quarter of the memory and fastest on large galleries "
        "(cosine error about 0.005).",
    )
    store_images: bool = Field(
        default=False,
        description="Keep enrolment images (encrypted) in the gallery. Off by default: only "
        "embeddings are kept, and crops from cameras are never stored.",
    )
    max_crop_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=16 << 20,
        description="Largest face crop reassembled from FACE_CROP frames; larger ones are dropped.",
    )

    def resolved_gallery_path(self, storage_path: Path) -> Path:
        """`gallery_path`, or its default beside the main database."""
        if self.gallery_path is not None:
            return self.gallery_path
        return storage_path.with_name(storage_path.stem + ".faces.db")


class AgentConfig(Section):
    """The whole configuration of one gateway."""

    device: DeviceConfig = Field(default_factory=DeviceConfig, description="Gateway identity.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection.")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="Upstream cadence.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Local store.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model bundles.")
    ota: OtaConfig = Field(
        default_factory=OtaConfig, description="Over-the-air model updates (docs/ota.md)."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")
    commands: CommandsConfig = Field(
        default_factory=CommandsConfig, description="Remote commands over MQTT."
    )
    service: ServiceConfig = Field(
        default_factory=ServiceConfig, description="systemd watchdog and the control socket."
    )
    faces: FacesConfig = Field(
        default_factory=FacesConfig, description="Face identification (off by default)."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics and health over HTTP."
    )
    sensors: list[SensorConfig] = Field(
        default_factory=default_sensors,
        description="Sensors to read; each picks its link kind with `link`.",
    )

    @model_validator(mode="after")
    def _unique_sensor_names(self) -> AgentConfig:
        names = [sensor.name for sensor in self.sensors]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"sensor names must be unique, repeated: {', '.join(duplicates)}")
        return self

    @property
    def topic_root(self) -> str:
        """`<prefix>/<tenant>/<site>/<device>`: the root of every topic of this gateway."""
        d = self.device
        return f"{self.mqtt.topic_prefix}/{d.tenant}/{d.site}/{d.id}"

    @property
    def client_id(self) -> str:
        """The MQTT client id; unique per gateway so two never kick each other off."""
        return self.mqtt.client_id or f"edge-agent-{self.device.tenant}-{self.device.id}"


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Merge `EDGE_AGENT_SECTION__KEY=value` variables into raw config data.

    Variables whose path cannot be applied (a list index past the end) are skipped here;
    `parse_config` reports them.

    Returns:
        The dotted key paths that were overridden (for logging and `config show`).
    """
    return list(apply_env(data, environ, _default_sensor_tables)[0])


def _default_sensor_tables() -> list[dict[str, Any]]:
    return [s.model_dump(mode="json", exclude_defaults=True) for s in default_sensors()]


def _issues_from(err: ValidationError) -> list[ConfigIssue]:
    issues = []
    for e in err.errors(include_url=False):
        loc = [str(part) for part in e["loc"]]
        # Discriminated unions add the chosen tag to the location; it is noise to a reader.
        if len(loc) >= 3 and loc[0] == "sensors" and loc[2] in {"serial", "ble", "emulated"}:
            del loc[2]
        if len(loc) >= 4 and loc[2] == "profile" and loc[3] in available_profiles():
            del loc[3]
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `edge-agent config show` lists valid keys)"
        elif e["type"].startswith("union_tag_") and loc[-1:] == ["profile"]:
            message = f"unknown protocol; valid protocols are {', '.join(available_profiles())}"
        elif e["type"] == "union_tag_invalid":
            message = "unknown link kind; valid kinds are 'serial', 'ble', 'emulated'"
        elif e["type"] == "union_tag_not_found":
            message = "missing `link`; set it to 'serial', 'ble' or 'emulated'"
        issues.append(ConfigIssue(".".join(loc), message))
    return issues


def parse_config(
    data: dict[str, Any], *, source: str, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate raw config data (after environment overrides) into an `AgentConfig`.

    Raises:
        ConfigError: listing every problem with its key path.
    """
    environ = os.environ if environ is None else environ
    if any(name.startswith(ENV_PREFIX) for name in environ):
        data = copy.deepcopy(data)  # overrides must not reach into the caller's tables
    else:
        data = dict(data)
    applied, refused = apply_env(data, environ, _default_sensor_tables)
    issues = [
        ConfigIssue(
            name[len(ENV_PREFIX) :].lower().replace(ENV_SEPARATOR, "."),
            f"environment variable {name}: no such list entry or table to set",
        )
        for name in refused
    ]
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as err:
        issues += _issues_from(err)
    else:
        if not issues:
            return config
    variables: list[str] = []
    for i, issue in enumerate(issues):
        variable = variable_for(issue.path, applied)
        if variable is not None:
            issues[i] = ConfigIssue(issue.path, f"{issue.message} (from {variable})")
            variables.append(variable)
    from_env = len(variables) + len(refused) == len(issues)
    if from_env:
        source = "environment variable " + ", ".join(sorted({*variables, *refused}))
    raise ConfigError(source, issues)


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load a TOML config file, or the embedded default when `path` is None.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not TOML, or has invalid
            values (an invalid value set by an environment override names the variable).
    """
    if path is None:
        return parse_config({}, source="embedded default", environ=environ)
    return parse_config(read_config_file(path), source=str(path), environ=environ)


def render_config(config: AgentConfig) -> str:
    """The effective config as TOML-like text with secrets masked."""
    data = config.model_dump(mode="json")
    if config.mqtt.password is not None:
        data["mqtt"]["password"] = "********"  # noqa: S105 - the mask, not a password
    return _to_toml(data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(pairs) + " }"
    return json.dumps(str(value))


def _to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, body in data.items():
        if section == "sensors":
            continue
        lines.append(f"[{section}]")
        for key, value in body.items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    for sensor in data.get("sensors", []):
        lines.append("[[sensors]]")
        for key, value in sensor.items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
