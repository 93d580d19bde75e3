"""`generate_batch`: thousands of prompts and edits from a manifest, resumable and cost-capped.

The modules follow the pipeline in the order the data moves through it:

- `manifest_text`: from a manifest's name (a file, `s3://`, a destination key) to its rows,
  parsed strictly (`ManifestInvalid`, `ManifestUnreadable`).
- `manifest`: check the rows (or a list of dicts) into `BatchItem`s.
- `keys`: key each item (source digests included), find what is done, read and write results.
- `budget`: which items fit the caps (`plan_budget`), at the default price per image.
- `items`: run one item (create, await, store) under the batch's shared controls, its record in
  the prediction ledger shared by every run of the batch; `ItemOutcome`.
- `progress`: count finished items for the progress artifact, the log and listeners.
- `shards`: or split the items over child flow runs of a deployment.
- `report`: the batch's result, its typed failure, the final table, the terminal progress bar.
- `gallery`: the grid of item previews (one markdown artifact under a size cap).
- `flow`: `generate_batch`, which drives them, and its cancellation hook.

`generate_batch`, `BatchResult` and `BatchItemsFailed` are re-exported by `prefect_seedream`.
"""

from prefect_seedream._lazy import check_import_name

check_import_name(__name__)
