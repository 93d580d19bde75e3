"""How we talk to Replicate: one group, no Prefect.

Read it in this order:

- `prediction`: the `Prediction` model and `PredictionStatus` (with `aborted`, which the
  `replicate` client does not know).
- `request_builders`: pure builders for every request and parsers for every answer.
- `protocol`: the sans-IO protocol (generators): what to send, when to retry, how to reconcile a
  create whose answer was lost, how to poll.
- `api`: `ReplicateApi`, the one HTTP choke point; `run` (sync) and `arun` (async) drive the same
  protocol, so both make the same requests and decisions.

The Prefect tasks in `prefect_seedream.tasks` are a thin layer on top of these.
"""
