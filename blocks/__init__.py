"""Prefect blocks for prefect-seedream: Replicate credentials and the S3 destination."""

from blocks.replicate_credentials import ReplicateCredentials
from blocks.s3_destination import S3Destination

__all__ = ["ReplicateCredentials", "S3Destination"]
