"""Hypothesis settings for the fuzz tests, chosen by ``HYPOTHESIS_PROFILE``:

* ``ci`` (the default): a few hundred examples per property, so that the whole of
  ``tests/fuzz`` runs in well under a minute on a 2-core machine, in every CI run;
* ``long``: a hundred times more, for a search run by hand
  (``HYPOTHESIS_PROFILE=long pytest tests/fuzz``).

The deadline catches a parser that hangs or turns quadratic on some input. Examples
that failed once are kept under ``.pytest_cache`` (ignored by git) and tried first on
the next run; every bug found is also pinned as an explicit ``@example`` or a plain
regression test, so that it is checked without the database.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_DATABASE = DirectoryBasedExampleDatabase(
    Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis"
)

settings.register_profile(
    "ci",
    max_examples=250,
    deadline=timedelta(seconds=2),
    database=_DATABASE,
    # the strategies build whole DICOM files and multipart bodies: generating one can
    # take longer than hypothesis expects of a strategy
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    parent=settings.get_profile("ci"),
    max_examples=25_000,
    deadline=timedelta(seconds=5),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
