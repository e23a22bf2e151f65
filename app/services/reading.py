"""The reading worklist (issue #18): each stable study gets a UPS workitem "read study"
(:func:`app.services.ups.reading_workitem`), which a radiologist's tool finds with
UPS-RS (``GET /dicom-web/workitems?WorklistLabel=READING``), claims and completes; its
Procedure Step State is the study's reading status.

It is the ``worklist:reading`` destination of routing (:mod:`app.services.routes`),
kept as the route ``reading-worklist`` on ``study.stable`` while
``PICTOR_READING_WORKLIST`` is on (the default): the route's queue makes it survive a
crash or an index outage like any forward, and ``pictor route status`` shows it. A
study gets one reading workitem, the first time it is stable; it stays what its
reader made it when the study grows later.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.config import Settings
from app.errors import NotFound, PictorError
from app.index.database import Pool
from app.index.retrieve import StoredInstance
from app.services.routes import Deid, Sender
from app.services.ups import Workitems

#: who the audit names as the creator of reading workitems
WHO = "pictor:reading-worklist"


class ReadingSenders:
    """The factory :class:`app.services.routes.Routes` calls for ``worklist:`` routes."""

    def __init__(self, pool: Pool, settings: Settings) -> None:
        self.workitems = Workitems(pool, settings.dimse_ae_title)
        self.base = settings.dicomweb_url

    def __call__(self, target: str, token: str | None, study: str) -> Sender:
        return ReadingSender(self, study)


class ReadingSender:
    def __init__(self, senders: ReadingSenders, study: str) -> None:
        self.senders = senders
        self.study = study
        self.done = False

    async def send(
        self, batch: Sequence[StoredInstance], deid: Deid | None
    ) -> tuple[set[str], str | None]:
        uids = {i.sop_instance_uid for i in batch}
        if self.done:
            return uids, None
        try:
            await self.senders.workitems.create_reading(self.study, self.senders.base, who=WHO)
        except NotFound:
            return uids, None  # deleted since it was stable: nothing to read
        except PictorError as exc:  # the index away: the queue tries again
            return set(), exc.message
        self.done = True
        return uids, None

    async def close(self) -> None:
        return None
