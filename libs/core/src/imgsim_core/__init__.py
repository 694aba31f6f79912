"""imgsim shared library: what more than one service needs.

Event contracts and topic names (:mod:`contracts`, :mod:`topics`), settings groups
(:mod:`settings`), image intake (:mod:`images`), Kafka helpers (:mod:`kafka`,
:mod:`requestreply`) and telemetry (:mod:`telemetry`). Nothing here reads the
environment or imports a service.
"""

__version__ = "0.1.0"
