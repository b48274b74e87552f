"""Monitoring for operators: `/metrics` (Prometheus) and `/healthz`, served by the daemon."""
