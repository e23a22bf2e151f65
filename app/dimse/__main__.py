"""``python -m app.dimse``: the DIMSE process (started by ``pictor serve``)."""

from __future__ import annotations

import sys

from app.dimse.server import main

if __name__ == "__main__":
    sys.exit(main())
