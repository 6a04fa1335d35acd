"""Adapters to other data-assimilation frameworks (optional dependencies, imported on demand):
:mod:`latentda.integrations.dapper` (``pip install latentda[dapper]``)."""

__all__: list[str] = []
