"""Glue between Sweep's SDK and training frameworks: `sweep.integrations.lightning`."""
