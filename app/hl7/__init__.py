"""HL7 v2 from the RIS/HIS (issue #18): ADT demographics and merges, imaging orders.

One process started by ``pictor serve`` (``python -m app.hl7``, :mod:`app.hl7.server`)
listens for MLLP connections (:mod:`app.hl7.listener`); :mod:`app.hl7.messages` reads
the messages with the ``hl7`` package into what the worklist service acts on, and
builds the acknowledgements. Only this package imports ``hl7``.
"""
