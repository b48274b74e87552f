"""The one TLS loader of the broker connection: the uplink and `doctor`'s broker check load
`mqtt.ca_file`, `mqtt.cert_file` and `mqtt.key_file` through it, so both name a bad file the
same way."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from edge_agent.errors import ConfigError, ConfigIssue, os_reason

if TYPE_CHECKING:
    from edge_agent.config import MqttConfig

__all__ = ["load_tls"]


def _error(key: str, message: str) -> ConfigError:
    return ConfigError("the mqtt section", [ConfigIssue(key, message)])


def load_tls(mqtt: MqttConfig, context: ssl.SSLContext) -> None:
    """Load the CA (`ca_file`, else the system's) and the client certificate into `context`.

    Raises:
        ConfigError: a file is missing, unreadable or not what its key says, naming the key,
            the file and what to do.
    """
    try:
        if mqtt.ca_file is not None:
            context.load_verify_locations(cafile=str(mqtt.ca_file))
        else:
            context.load_default_certs()
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        raise _error(
            "mqtt.ca_file",
            f"{mqtt.ca_file} cannot be loaded ({os_reason(err)}): point it at the PEM file of the "
            "CA that signed the broker's certificate",
        ) from err
    if mqtt.cert_file is None or mqtt.key_file is None:
        return
    try:
        context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file))
    except (OSError, ValueError) as err:
        raise _error(
            "mqtt.cert_file",
            f"{mqtt.cert_file} with mqtt.key_file {mqtt.key_file} cannot be loaded "
            f"({os_reason(err)}): both must be PEM, the certificate and its own unencrypted "
            "private key",
        ) from err
