"""Prefect flows over the pipeline stages, and the `prefsynth` CLI."""
