"""The front door's modules: manifests, their sources, the module pool, the module types.

``/{project}/{module}/…`` is served by the instance of the module the project's manifest
names (docs/modules.md). Nothing here imports :mod:`dtecho.server`.
"""
