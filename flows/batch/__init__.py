"""`generate_batch`: thousands of prompts and edits from a manifest, resumable and cost-capped.

The modules follow the pipeline in the order the data moves through it:

- `manifest`: read and check the manifest (a file, `s3://`, a destination key, or a list) into
  `BatchItem`s.
- `keys`: key each item (source digests included), find what is done, the batch's records in S3.
- `budget`: which items fit the caps (`plan_budget`), at the default price per image.
- `items`: run one item (create, await, store) under the batch's shared controls; `ItemOutcome`.
- `progress`: count finished items for the progress artifact, the log and listeners.
- `shards`: or split the items over child flow runs of a deployment.
- `report`: the batch's result, its typed failure, the final table, the terminal progress bar.
- `flow`: `generate_batch`, which drives them, and its cancellation hook.

`generate_batch`, `BatchResult` and `BatchItemsFailed` are re-exported by `prefect_seedream`.
"""

from prefect_seedream._lazy import check_import_name

check_import_name(__name__)
