"""`edge-agent bench`: the performance contract, measured on this machine, as one JSON object.

One module per part of the measurement; the CLI entry point is `edge_agent/commands/bench.py`:

- `run`: the orchestrator (`run_bench`), the targets and the table;
- `harness`: what every bench process shares (constants, JSON lines, a private broker,
  CPU and memory readings, `machine()`);
- `timed`: the daemon on a worker's thread, observed with stopwatches;
- `ingest`: decoding, the raw read and the whole daemon as fast as it goes;
- `realtime`: emulated sensors at 100 Hz: latency, CPU, memory;
- `uplink`: the outbox drain against bare paho, uplink bytes per sensor hour;
- `ota`: model hot swap and automatic rollback on a live daemon;
- `faces`: 1:N identification and crop → decision.

Helper processes run as `python -m edge_agent.bench MODE` (`__main__`). Nothing is imported
here, so each worker loads only what it measures.
"""
