"""Deployments of the prefect-seedream flows (see prefect.yaml)."""

__all__: list[str] = []
