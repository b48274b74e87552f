"""The exception tree of edge-agent.

One base class, subclasses that also inherit the matching built-in where one
exists, and structured fields so callers (and the CLI) can report precisely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def os_reason(err: BaseException) -> str:
    """An OS or TLS error in a few words, for a message that already names the file: the
    `strerror` of an OS error (no errno, no repeated path), the text of anything else."""
    import ssl

    if isinstance(err, OSError) and err.strerror and not isinstance(err, ssl.SSLError):
        return err.strerror
    return str(err) or type(err).__name__


class EdgeAgentError(Exception):
    """Base class of every error raised on purpose by edge-agent."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration: where it is and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"


class ConfigError(EdgeAgentError, ValueError):
    """A configuration file or override is invalid.

    Attributes:
        source: The file (or "environment") the bad values came from.
        issues: Every problem found, each with its dotted key path.
    """

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        if len(self.issues) == 1 and not self.issues[0].path:
            # A file that cannot be read at all: one line naming it.
            super().__init__(f"{source}: {self.issues[0].message}")
            return
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class BundleError(EdgeAgentError, ValueError):
    """A model bundle is missing, malformed or does not match its manifest.

    Attributes:
        bundle: The bundle directory or name.
        reason: What is wrong and, where possible, what to do.
    """

    def __init__(self, bundle: str, reason: str) -> None:
        self.bundle = bundle
        self.reason = reason
        super().__init__(f"model bundle {bundle}: {reason}")


class RuntimeBackendError(EdgeAgentError, RuntimeError):
    """An inference runtime could not load or run a model."""


class StoreError(EdgeAgentError, OSError):
    """The local SQLite store failed (disk full, corruption, permissions)."""


class CommandError(EdgeAgentError):
    """A command (MQTT or control socket) refused or failed.

    Attributes:
        code: Machine-readable reason ("bad_request", "forbidden", "busy", ...).
        message: What went wrong, for a person.
        details: JSON-able extra data (validation errors, valid names), or None.
    """

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class ConfigEditError(EdgeAgentError, ValueError):
    """A config edit (`config set`, `config.set`) was refused; the file is unchanged.

    Attributes:
        code: `config_unreadable` (the file cannot be read or parsed), `bad_key` (no such
            key path, or it crosses a value), `invalid_config` (the result does not
            validate) or `not_persistable` (the file cannot be written).
        details: One line per problem, each naming its key path where there is one.
    """

    def __init__(self, code: str, message: str, details: Sequence[str] = ()) -> None:
        self.code = code
        self.details = list(details)
        super().__init__(message)
