"""Why an update was refused: one error class with the step and a machine-readable check."""

from __future__ import annotations

from edge_agent.errors import EdgeAgentError


class UpdateRejectedError(EdgeAgentError, ValueError):
    """An update was refused; the previous version keeps serving.

    Attributes:
        stage: The step that refused it: `download`, `verify`, `extract`, `stage`, `activate`.
        check: What failed, for machines: e.g. `signature`, `untrusted_key`, `sha256`,
            `missing_file`, `unsafe_entry`, `truncated`, `oversized`, `input_shape`,
            `non_finite`, `golden`, `latency`.
        reason: What is wrong and, where possible, what to do, for people.
    """

    def __init__(self, stage: str, check: str, reason: str) -> None:
        self.stage = stage
        self.check = check
        self.reason = reason
        super().__init__(f"update refused at {stage} ({check}): {reason}")


class OtaStateError(EdgeAgentError, RuntimeError):
    """An operation on the installed versions is not possible (unknown version, in use, busy)."""
