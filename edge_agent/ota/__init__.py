"""Over-the-air model updates: signed bundle archives, staged self-test, hot swap, probation.

The path of an update, one module per step:

```
publisher:  models pack/sign ─► archive (manifest + detached ed25519 signature + files)
gateway:    fetch (https/file/inline) ─► archive (verify before unpack) ─► repository (safe
            extract into a temp dir, atomic rename) ─► staging (separate session: shapes,
            golden vectors, latency) ─► daemon.swap_model (between two pipeline rounds)
            ─► probation (error rate, latency, NaN/inf, label drift/collapse) ─► confirm or
            roll back
```

`manager.OtaManager` drives it inside the daemon; `edge-agent models ...` drives the same
steps from the command line (docs/ota.md).
"""
