"""What a configuration reload (SIGHUP, `edge-agent reload`) has to change.

The plan is computed from the old and new configuration alone, plus the model
bundles the new configuration resolves to, so the daemon restarts exactly the
sensors whose settings or models changed and leaves every other stream running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError
from edge_agent.inference.bundle import Bundle, find_bundle

# Keys baked into objects built once at start (the store's topic root and path, the
# socket the CLI finds the daemon at): a reload reports them instead of half-applying.
RESTART_KEYS = ("device", "storage", "mqtt.topic_prefix", "service.control_socket", "metrics")


@dataclass
class ReloadPlan:
    """The difference between the running and the new configuration.

    Attributes:
        added: Sensors to start.
        removed: Sensors to stop.
        changed: Sensors to restart (settings or model bundles changed).
        unchanged: Sensors left alone: their links and streams keep running.
        mqtt_changed: The broker connection must be re-established.
        sync_changed: Upstream cadence changed (the ticker restarts).
        logging_changed: Log settings changed.
        restart_required: Dotted keys that changed but apply only after a restart.
        models_changed: Model references whose bundle on disk changed or became loadable.
    """

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    mqtt_changed: bool = False
    sync_changed: bool = False
    logging_changed: bool = False
    restart_required: list[str] = field(default_factory=list)
    models_changed: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for the reload reply and the `agent.reloaded` event."""
        return {
            "added": self.added,
            "removed": self.removed,
            "restarted": self.changed,
            "unchanged": self.unchanged,
            "mqtt": "reconnected" if self.mqtt_changed else "unchanged",
            "models_changed": self.models_changed,
            "restart_required": self.restart_required,
        }


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def resolve_models(config: AgentConfig, shipped: Path) -> dict[str, Bundle | BundleError]:
    """Resolve (and verify) every model reference of the enabled sensors."""
    search = [*config.models.dirs, shipped]
    refs = {ref for s in config.sensors if s.enabled for ref in s.models}
    out: dict[str, Bundle | BundleError] = {}
    for ref in sorted(refs):
        try:
            out[ref] = find_bundle(ref, search)
        except BundleError as err:
            out[ref] = err
    return out


def bundle_changed(old: Bundle, new: Bundle) -> bool:
    """Whether `new` is a different model than the loaded `old` (place, version or files)."""
    return (
        old.path.resolve() != new.path.resolve()
        or old.manifest.version != new.manifest.version
        or old.manifest.files != new.manifest.files
    )


def plan_reload(
    old: AgentConfig,
    new: AgentConfig,
    loaded: dict[str, Bundle],
    resolved: dict[str, Bundle | BundleError],
) -> ReloadPlan:
    """Compare configurations and bundles.

    Args:
        old: The running configuration.
        new: The configuration just read.
        loaded: Model reference → the bundle currently loaded for it.
        resolved: Model reference → what the new configuration resolves it to.
    """
    plan = ReloadPlan()
    old_data, new_data = _dump(old), _dump(new)
    plan.restart_required = [k for k in RESTART_KEYS if _get(old_data, k) != _get(new_data, k)]
    old_mqtt = {k: v for k, v in old_data["mqtt"].items() if k != "topic_prefix"}
    new_mqtt = {k: v for k, v in new_data["mqtt"].items() if k != "topic_prefix"}
    # The password is masked in dumps; compare the secrets themselves.
    secret_old = old.mqtt.password.get_secret_value() if old.mqtt.password else None
    secret_new = new.mqtt.password.get_secret_value() if new.mqtt.password else None
    plan.mqtt_changed = old_mqtt != new_mqtt or secret_old != secret_new
    plan.sync_changed = old_data["sync"] != new_data["sync"]
    plan.logging_changed = old_data["logging"] != new_data["logging"]
    # A bundle that changed on disk, or one that failed to load before and loads now.
    plan.models_changed = sorted(
        ref
        for ref, bundle in resolved.items()
        if isinstance(bundle, Bundle) and (ref not in loaded or bundle_changed(loaded[ref], bundle))
    )
    models_changed = set(plan.models_changed)
    before = {s.name: s for s in old.sensors}
    after = {s.name: s for s in new.sensors}
    for name, sensor in after.items():
        previous = before.get(name)
        if previous is None:
            plan.added.append(name)
        elif _dump(previous) != _dump(sensor) or (
            sensor.enabled and models_changed.intersection(sensor.models)
        ):
            plan.changed.append(name)
        else:
            plan.unchanged.append(name)
    plan.removed = [name for name in before if name not in after]
    return plan
