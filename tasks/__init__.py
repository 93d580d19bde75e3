"""The Prefect tasks for Seedream 4 on Replicate, and what they stand on.

The tasks a flow composes (all re-exported by `prefect_seedream`, the public face):

- `predictions`: `create_prediction`, `get_prediction`, `await_prediction`, `cancel_prediction`;
  `predictions_async`: their async twins. Both are thin layers on `replicate_client`.
- `storage`: `store_outputs` / `store_output` (and `storage_async`), on `s3_storage`.
- `seedream_input`: `SeedreamInput`, every rule checked before a create is sent.
- `errors`: `SeedreamError` and its leaves, `retry_condition`.
- `prediction_support` (creates: the ledger's claim protocol), `wait_support` (waits),
  `prediction_ledger` (the durable ledger in S3), `spend_limit` (reservations against the
  period limits), `concurrency`, `connections`, `redaction`, `seedream_settings`, `webhooks`:
  planning, rate limits, block resolution, log redaction, settings, webhook signatures.

Importing this package imports nothing else (no Prefect), so the `seedream` command starts fast.
"""

from prefect_seedream._lazy import check_import_name

check_import_name(__name__)
