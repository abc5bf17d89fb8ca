"""The frontend-neutral core: the job service, storage, quotas, settings, logs and metrics.

Front doors (the Discord adapter in ``bot/``, the HTTP adapter) call it; it calls the
engine. It imports neither discord nor a web framework.
"""
