"""The base of every config section, and value types that check sense, not only type.

Hosts and paths must name something. Kept apart from the sections so a plugin's own
config model (and the sensor configs in `config_sensors`) can use them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

__all__ = ["DeviceText", "FilePath", "Host", "Section"]


def _host(value: str) -> str:
    """A broker host: an empty or blank one ends the MQTT client, so it is refused here."""
    if not value or any(c.isspace() for c in value) or "/" in value:
        raise ValueError(
            "must be a host name or address (e.g. broker.lan, 10.0.0.5, ::1): "
            "not empty, no spaces, no slashes"
        )
    return value


def _path_text(value: Any) -> Any:
    """A path given as text must name something: "" would silently mean the current directory."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty; give a file or directory path")
        if "\x00" in value:
            raise ValueError("must not hold a NUL character")
    return value


Host = Annotated[str, AfterValidator(_host)]
"""A host name or address: not empty, no white space."""
FilePath = Annotated[Path, BeforeValidator(_path_text)]
"""A path that is not empty (Path("") would be the current directory)."""
DeviceText = Annotated[str, BeforeValidator(_path_text)]
"""A device path kept as text (a serial port): not blank."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment.

    No key means NaN or an infinity, so numbers must be finite everywhere.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )
