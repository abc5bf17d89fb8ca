"""The HTTP adapter: the API gateway over the core's job service (``api.app``)."""
