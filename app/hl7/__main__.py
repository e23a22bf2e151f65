"""``python -m app.hl7``: the HL7 process (started by ``pictor serve``)."""

from __future__ import annotations

import sys

from app.hl7.server import main

if __name__ == "__main__":
    sys.exit(main())
