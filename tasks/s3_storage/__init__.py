"""How bytes reach S3: one group, no Prefect.

Read it in this order:

- `keys`: where an output goes (`{prefix}/{prediction_id}/{index}.{ext}`) and its metadata.
- `checks`: what the bytes are (content type from the bytes, dimensions, end marker).
- `upload`: the streamed, hashed, atomic upload (download in parts, multipart upload, publish).
- `previews`: a small JPEG of each image, made from the chunks on their way to S3.

`prefect_seedream.tasks.storage` is the Prefect task (`store_outputs`) on top of these.
"""
