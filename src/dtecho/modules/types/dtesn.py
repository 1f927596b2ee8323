"""``dtesn``: the DTESN API scoped to one project.

``/{project}/{module}/v1/dtesn/…`` is the plain DTESN API (processing, trainable models,
predictions, updates) through its own routes, with a model store of the project's own under
``<data_dir>/projects/<project>/<module>/``: a model trained in one project is invisible to
every other (its id answers 404 there), and the plain ``/v1/dtesn/models`` never lists it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from dtecho.modules.base import Module
from dtecho.modules.types.inference import CACHE_SCOPE
from dtecho.registry.versions import ModelVersions
from dtecho.services.dtesn_models import ModelService

__all__ = ["DTESN_MODELS_OVERRIDE", "DtesnModule", "DtesnModuleConfig"]

DTESN_MODELS_OVERRIDE = "dtesn_models"  # scope["state"] key: the project's ModelService


class DtesnModuleConfig(BaseModel):
    """The ``config`` of a ``dtesn`` module (nothing yet: the server's DTESN settings apply)."""

    model_config = ConfigDict(extra="forbid")


class DtesnModule(Module):
    """The DTESN API with the project's own trained models."""

    Config: ClassVar[type[BaseModel]] = DtesnModuleConfig
    builtin: ClassVar[Literal["openai", "dtesn"] | None] = "dtesn"
    description: ClassVar[str] = "DTESN processing and trainable models, scoped to the project."

    async def start(self) -> None:
        settings = self.context.services.settings()
        self.service = ModelService(
            self.context.data_dir,
            settings.batching,
            self.context.services.batch_metrics.get("dtesn_predict"),
            limits=settings.work_limits,
        )
        store = self.context.services.store
        if store is not None:  # the project's versions and aliases live in the server's store
            self.service.attach_versions(ModelVersions(store.versions))
        key = f"{self.context.project}/{self.context.module}".encode()
        self._overrides = {
            DTESN_MODELS_OVERRIDE: self.service,
            CACHE_SCOPE: hashlib.sha256(key).hexdigest()[:16],
        }

    async def close(self) -> None:
        await self.service.close()

    def overrides(self) -> Mapping[str, Any]:
        return self._overrides
