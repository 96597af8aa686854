"""Telemetry: metrics, traces and logs, each a product surface with a documented contract."""
