"""``python -m usseg_sdk.cli``: the ``usseg`` command without the console script."""

import sys

from usseg_sdk.cli import main

if __name__ == "__main__":
    sys.exit(main())
