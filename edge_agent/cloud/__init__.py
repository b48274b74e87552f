"""The reference cloud consumer: a fleet's telemetry into PostgreSQL (`edge-agent-cloud`).

Cloud side only: the daemon never imports this package (tests/test_structure.py holds
that), and it needs the `cloud` extra (psycopg). It builds on `edge_agent.contract` (topics,
payload models, seq-range arithmetic) and the documented MQTT contract, nothing else of the
gateway:

- `ingest`: what arrived, decoded and validated (telemetry, a reject, or unrelated);
- `schema`: the tables, created by the consumer;
- `store`: `CloudStore`, one transaction per batch, gap and gateway-status accounting;
- `consumer`: `CloudConsumer`, the MQTT client (protocol negotiation, `--share` check,
  fleet re-announce, `sync.resend` requests and replies);
- `report`: the JSON report;
- `cli`: `edge-agent-cloud run` / `report`;
- `args`: the broker-connection flags, shared with `scripts/cloud_consumer.py` (standard
  library only: the script runs without the `cloud` extra).

See docs/cloud.md.
"""
