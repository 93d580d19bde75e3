"""`generate_images` served by a runner, for the lifecycle tests (cancel, crash, killed runner).

Usage: `python serve_generate.py NAME` serves the deployment `generate-images/NAME`.
"""

import sys

from prefect_seedream.flows.image_flows import generate_images

if __name__ == "__main__":
    generate_images.serve(name=sys.argv[1], limit=4)
