"""The Prefect flows: what a user gets (all re-exported by `prefect_seedream`, the public face).

- `image_flows`: `generate_images`, `edit_image`; `image_flows_async`: `agenerate_images`,
  `aedit_image` (tasks, so gathered calls run concurrently).
- `batch`: `generate_batch`, a manifest of thousands of prompts and edits.
- `webhook_flows`: `submit_images` / `store_prediction`, no worker waiting on Replicate.
- `events`, `run_hooks`, `image_report`, `flow_support`, `source_images`, `pipeline_example`:
  events in and out, cancel-on-crash hooks, artifacts, shared flow plumbing, edit sources, and the
  example downstream pipeline.

Importing this package imports nothing else (no Prefect), so the `seedream` command starts fast.
"""

from prefect_seedream._lazy import check_import_name

check_import_name(__name__)
