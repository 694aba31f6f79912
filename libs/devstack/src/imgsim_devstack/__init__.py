"""The local imgsim stack as processes: Kafka (KRaft), Redis and the three services.

``make up`` runs :mod:`imgsim_devstack.__main__`; the integration tests use
:class:`~imgsim_devstack.processes.KafkaBroker`, :class:`~imgsim_devstack.processes.RedisServer`
and :class:`~imgsim_devstack.processes.ServiceProcess` directly. Everything binds to
127.0.0.1, and every process is tracked by its PID and stopped by it.
"""
