"""The DIMSE shim: legacy modalities and PACS reach the archive over DICOM networking.

PS3.7 (DIMSE services) and PS3.8 (association negotiation) through pynetdicom, in one
dedicated process started by ``pictor serve`` (:mod:`app.dimse.server`):

* Verification SCP, C-ECHO (PS3.4 Annex A);
* Storage SCP, C-STORE (PS3.4 Annex B) through the same two-phase ingest as STOW-RS
  (:mod:`app.dimse.store`);
* Query/Retrieve SCP, Patient Root and Study Root (PS3.4 Annex C): C-FIND through the
  QIDO query model (:mod:`app.dimse.find`), C-MOVE and C-GET (:mod:`app.dimse.retrieve`).

pynetdicom runs each association on its own thread; :mod:`app.dimse.bridge` is the one
place where those threads hand work to the process's asyncio event loop, which owns the
single database pool and blob store. Only this package imports pynetdicom.
"""
