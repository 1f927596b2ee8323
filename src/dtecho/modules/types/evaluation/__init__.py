"""The ``evaluation`` module type: run a dataset of prompts (chat and completions models) or
series (trained DTESN forecasting models) against several models, score the answers, store
the run and render a comparison page. See ``docs/modules/evaluation.md``.

Layout: :mod:`.config` (the manifest's ``config``), :mod:`.schema` (the ``POST /runs``
body), :mod:`.metrics`, :mod:`.runner` (the background execution), :mod:`.repository` and
:mod:`.tables` (the store), :mod:`.summary`, :mod:`.page` and ``templates/`` (HTML),
:mod:`.http` (routing and errors), :mod:`.module` (the module itself).
"""

from dtecho.modules.types.evaluation.config import Config
from dtecho.modules.types.evaluation.module import EvaluationModule

__all__ = ["Config", "EvaluationModule"]
