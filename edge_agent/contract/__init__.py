"""The MQTT contract in code: payload models and the reference consumer's checks.

Two forms of the same rules:

- `ContractChecker` is fed `(topic, payload)` in arrival order and keeps everything in
  memory; the end-to-end tests use it.
- `Ledger` stores every accepted message in a SQLite file and computes the report (gaps,
  duplicates, conflicts, out-of-order arrivals, latency) from what it stored. Several
  consumer processes sharing one MQTT shared subscription can write the same file; the
  report then covers what they received together. `scripts/cloud_consumer.py` wraps it in
  an MQTT client.

Both subtract the sequence ranges a gateway announced as dropped by policy
(`outbox.evicted` events) from the gaps they report, so only real losses count.

The package imports nothing of the daemon (only `edge_agent.errors`, pydantic and the
standard library), so a cloud-side consumer can use it without the gateway's dependencies:

- `payloads`: every uplink payload as a pydantic model, the source of `docs/schemas/`;
- `topics`: telemetry topics taken apart, sequence-range arithmetic;
- `checker`: `ContractChecker`;
- `ledger`: `Ledger`.
"""

from __future__ import annotations

from edge_agent.contract.checker import ENVELOPE, ContractChecker
from edge_agent.contract.ledger import Ledger
from edge_agent.contract.payloads import KINDS
from edge_agent.contract.topics import TopicName, parse_topic

__all__ = ["ENVELOPE", "KINDS", "ContractChecker", "Ledger", "TopicName", "parse_topic"]
