"""`python -m prefect_seedream.sandbox`."""

import sys

from prefect_seedream.sandbox.command_line import main

if __name__ == "__main__":
    sys.exit(main())
