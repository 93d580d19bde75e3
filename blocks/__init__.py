"""Prefect blocks for prefect-seedream: Replicate credentials and the S3 destination.

`prefect block register -m prefect_seedream.blocks` registers both.
"""

from __future__ import annotations

from prefect_seedream._lazy import check_import_name
from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
from prefect_seedream.blocks.s3_destination import S3Destination

__all__ = ["ReplicateCredentials", "S3Destination"]

# Imported eagerly: `prefect block register -m` finds blocks among the module's attributes.
check_import_name(__name__)
