"""`python -m prefect_seedream.deployments`: serve every deployment from this process (no work pool
needed).

The served runs take the shared create budget only if this process has
`SEEDREAM_RATE_LIMIT_NAME` set (prefect.yaml sets it for work-pool runs).
"""

from __future__ import annotations

from prefect_seedream.deployments.registry import build_all


def main() -> None:
    from prefect import serve

    serve(*build_all(), limit=8)


if __name__ == "__main__":
    main()
