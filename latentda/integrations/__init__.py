"""Adapters to other data-assimilation frameworks (optional dependencies, imported on demand):
:mod:`latentda.integrations.dapper` (``pip install latentda[dapper]``) and, for imperfect-model twin experiments
with DAPPER, :mod:`latentda.integrations.imperfect_model`."""

__all__: list[str] = []
