"""The fault matrix's batch and command-line columns: `generate_batch` and the
`seedream` CLI (the matrix, drivers and scenarios are in `test_fault_matrix.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_fault_matrix import BATCH_CLI_ENTRIES, Cell, cell_context, cells, flaky_s3, run_cell

pytestmark = pytest.mark.usefixtures("prefect_harness")

__all__ = ["cell_context", "flaky_s3"]  # fixtures, used by name


@pytest.mark.parametrize(("entry", "fault"), cells(*BATCH_CLI_ENTRIES))
def test_cell(entry: str, fault: str, request: pytest.FixtureRequest, record_cell: Any,
              record_na: Any, cell_context: Callable[[str, str], Cell]) -> None:
    run_cell(entry, fault, request, record_cell, record_na, cell_context)
