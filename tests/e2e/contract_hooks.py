"""Schemathesis hooks: the request rules that JSON Schema cannot state, applied to what it
generates.

The OpenAPI document states every constraint JSON Schema can express (types, bounds, enums,
``if``/``then`` rules between fields). A few rules relate values in ways it cannot: rows of
equal length, as many target rows as input rows, a warmup shorter than the data, an expiry
in the future, a balanced membrane tree, and, for a model that exists, rows as wide as the
model's inputs. Each is stated in its field's description and enforced by the server with a
400 naming the field; a generated request that breaks one is not "valid by the document",
so these hooks leave it out (``filter_case``) or, for the model's width, fit it to the model
(``map_case``). Nothing here changes what is checked about the answers.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import schemathesis

from dtecho.dtesn.search import check_folds
from dtecho.protocol.dtesn import DtesnChatRequest
from dtecho.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from dtecho.services import budget

_SERIES_FIELDS = ("input", "inputs", "targets")
# The contract server's work budgets (test_api_contract.py sets both from these variables):
# work above them is refused with a 400 request_too_costly, which is documented behaviour,
# so requests that ask for it are not "valid" in the sense the checks mean.
SYNC_COST = float(os.environ.get("CONTRACT_MAX_SYNC_COST", "2"))
BACKGROUND_COST = float(os.environ.get("CONTRACT_MAX_BACKGROUND_COST", "10"))
_PROCESSING = {"/v1/dtesn/process", "/v1/dtesn/stream", "/dtesn"}
# The OpenAI routes keep fields they do not declare and pass them to an upstream server; a
# model served in-process refuses them (400, unsupported_parameter). Which one a model is,
# and what it can do, is the server's state, not the document's.
_MODEL_CALLS = {
    "/v1/chat/completions": (ChatCompletionRequest, "chat"),
    "/v1/dtesn/chat/completions": (DtesnChatRequest, "chat"),
    "/v1/completions": (CompletionRequest, "completions"),
    "/v1/embeddings": (EmbeddingRequest, "embeddings"),
}
_capabilities: dict[str, dict[str, Any] | None] = {}


def _model_card(model: str) -> dict[str, Any] | None:
    """A served model's card (None for a model not served: a 404 is fine)."""
    if model not in _capabilities:
        base = os.environ.get("CONTRACT_BASE_URL", "")
        try:
            answer = httpx.get(f"{base}/v1/models/{quote(model, safe='')}", timeout=5)
            card = answer.json() if answer.status_code == 200 else None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError):
            card = None
        _capabilities[model] = card if isinstance(card, dict) else None
    return _capabilities[model]


def _token_ids(value: Any) -> list[int]:
    if not isinstance(value, list):
        return []
    ids: list[int] = []
    for item in value:
        ids += (
            _token_ids(item) if isinstance(item, list) else [item] if isinstance(item, int) else []
        )
    return ids


def _callable_model(path: str, body: dict[str, Any]) -> bool:
    model_type, capability = _MODEL_CALLS[path]
    model = body.get("model")
    if not isinstance(model, str):
        return True
    card = _model_card(model)
    if card is None:
        return True  # not served: 404, which the checks accept
    capabilities = card.get("capabilities") or {}
    if not capabilities.get(capability, False):
        return False
    if not set(body) <= set(model_type.model_fields):
        return False  # in-process engines refuse undeclared fields
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    for message in messages:
        parts = message.get("content") if isinstance(message, dict) else None
        if isinstance(parts, list) and any(
            not isinstance(part, dict) or part.get("type") != "text" for part in parts
        ):
            return False  # in-process engines read text parts only (upstreams take others)
    max_n = capabilities.get("max_n")
    if isinstance(max_n, int) and isinstance(body.get("n"), int | float) and body["n"] > max_n:
        return False
    cap, n = capabilities.get("max_output_tokens"), body.get("n", 1)
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    numbers = all(isinstance(x, int | float) for x in (cap, asked, n))
    if numbers and asked * n > cap:  # type: ignore[operator]
        return False  # the model's bound on one request's work (its card says it)
    if str(card.get("tokenizer", "")).startswith("bytes"):  # token ids are bytes: 0-255
        ids = _token_ids(body.get("prompt")) + _token_ids(body.get("input"))
        if any(not 0 <= i <= 255 for i in ids):
            return False
    return True


def _rows(value: Any) -> list[Any] | None:
    """The rows of a series or vector input, or None for a string/other value."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int | float) and not isinstance(item, bool) for item in value):
        return [[item] for item in value]
    return value


def _ragged(value: Any) -> bool:
    rows = _rows(value)
    if rows is None or not all(isinstance(row, list) for row in rows):
        return False
    return len({len(row) for row in rows}) > 1


def _tree_ok(tree: Any) -> bool:
    if not isinstance(tree, str):
        return True
    depth = 0
    closed = False
    for ch in tree.strip():
        if closed:
            return False  # a second top-level tree
        depth += 1 if ch == "(" else -1
        if depth < 0:
            return False
        closed = depth == 0
    return closed


def _in_future(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return True  # not a date-time at all: the schema's own business
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment > datetime.now(UTC)


def _steps(value: Any) -> int | None:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    rows = _rows(value)
    return None if rows is None else len(rows)


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError, OverflowError):  # OverflowError: a float infinity
        return default


def _process_cost(steps: int, body: dict[str, Any], prefix: str = "") -> float:
    return budget.process_cost(
        steps,
        esn_size=_int(body.get(f"{prefix}esn_size"), 512),
        membrane_depth=_int(body.get(f"{prefix}membrane_depth"), 4),
        integrator=str(body.get("integrator", "euler")),
    ).seconds


def _affordable(path: str, body: dict[str, Any]) -> bool:
    """Within the contract server's budgets, estimated as the services estimate them."""
    try:
        if path in _PROCESSING:
            steps = _steps(body.get("input"))
            return steps is None or _process_cost(steps, body) <= SYNC_COST
        if path == "/v1/dtesn/batch":
            items = body.get("inputs")
            steps = sum(_steps(item) or 0 for item in items) if isinstance(items, list) else 0
            return _process_cost(steps, body) <= SYNC_COST
        if path == "/v1/dtesn/chat/completions" and body.get("enable_dtesn", True):
            messages = body.get("messages") if isinstance(body.get("messages"), list) else []
            text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
            return _process_cost(max(1, len(text.encode("utf-8", "surrogatepass"))), body,
                                 "dtesn_") <= SYNC_COST  # fmt: skip
        if path == "/v1/dtesn/models":
            return _affordable_training(body)
    except (TypeError, ValueError, KeyError, OverflowError):
        return True  # a body the schema refuses anyway
    return True


def _affordable_training(body: dict[str, Any]) -> bool:
    inputs = _rows(body.get("inputs"))
    if inputs is None or not isinstance(inputs[0], list):
        return True
    rows, width = len(inputs), len(inputs[0])
    config = body.get("config", {})
    if config == "auto":
        tune = body.get("tune") or {}
        cost = budget.tune_cost(rows, trials=_int(tune.get("trials"), 30),
                                folds=_int(tune.get("folds"), 3),
                                units=_int(tune.get("units"), 400), input_dim=width)  # fmt: skip
        return cost.seconds <= BACKGROUND_COST
    if not isinstance(config, dict):
        return True
    shape = {"units": _int(config.get("units"), 400), "depth": config.get("depth", 1),
             "tree": config.get("tree"), "connectivity": config.get("connectivity", 0.1),
             "integrator": config.get("integrator", "euler")}  # fmt: skip
    seconds = budget.fit_cost(rows, input_dim=width, **shape).seconds
    limit = SYNC_COST if body.get("background") is False else BACKGROUND_COST
    return seconds <= limit


def _consistent(path: str, body: dict[str, Any]) -> bool:
    if path in _MODEL_CALLS and not _callable_model(path, body):
        return False
    if not _affordable(path, body):
        return False
    if path in _MODEL_CALLS:
        return True
    if any(_ragged(body.get(name)) for name in _SERIES_FIELDS):
        return False
    inputs, targets = _rows(body.get("inputs")), _rows(body.get("targets"))
    if inputs is not None and targets is not None and len(inputs) != len(targets):
        return False
    warmup = body.get("warmup", 100 if path == "/v1/dtesn/models" else 0)
    if inputs is not None and isinstance(warmup, int | float) and warmup >= len(inputs):
        return False
    config = body.get("config")
    if isinstance(config, dict) and not _tree_ok(config.get("tree")):
        return False
    if config == "auto" and inputs is not None and targets is not None:
        folds = (body.get("tune") or {}).get("folds", 3)
        try:  # the search's own rule: enough rows for its folds
            check_folds(np.asarray(inputs, float), np.asarray(targets, float),
                        folds=int(folds), warmup=int(warmup))  # fmt: skip
        except (TypeError, ValueError):
            return False
    if path.startswith("/admin/keys") and not _in_future(body.get("expires_at")):
        return False
    # A random settings document would reconfigure the server under test.
    return not (path == "/admin/config/reload" and body.get("settings") is not None)


def _model_record(model_id: Any) -> dict[str, Any] | None:
    """A trained model's record from the server under test, or None."""
    base = os.environ.get("CONTRACT_BASE_URL")  # set by test_api_contract.py
    if not isinstance(model_id, str) or not base:
        return None
    try:
        url = f"{base.rstrip('/')}/v1/dtesn/models/{quote(model_id, safe='')}"
        record = httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, httpx.InvalidURL, ValueError):
        return None
    return record if isinstance(record, dict) and "input_dim" in record else None


def _affordable_use(path: str, model_id: Any, body: dict[str, Any]) -> bool:
    """A prediction or update within the sync budget, for the model it addresses."""
    record = _model_record(model_id)
    rows = _rows(body.get("inputs"))
    if record is None or rows is None or not isinstance(record.get("config"), dict):
        return True
    config = record["config"]
    shape = {key: config.get(key) for key in ("units", "depth", "tree", "connectivity",
                                              "integrator")}  # fmt: skip
    if path.endswith("/predict"):
        horizon = _int(body.get("horizon"), 0)
        cost = budget.predict_cost(len(rows), horizon, input_dim=record["input_dim"], **shape)
    else:
        cost = budget.update_cost(len(rows), input_dim=record["input_dim"], **shape)
    return cost.seconds <= SYNC_COST


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    operation = context.operation
    if operation is None or not isinstance(case.body, dict):
        return True
    if operation.path.startswith("/v1/dtesn/models/{model_id}/") and not _affordable_use(
        operation.path, (case.path_parameters or {}).get("model_id"), case.body
    ):
        return False
    return _consistent(operation.path, case.body)


def _fit(value: Any, width: int) -> Any:
    rows = _rows(value)
    if rows is None or not all(isinstance(row, list) for row in rows):
        return value
    return [(list(row) * width)[:width] if row else [0.0] * width for row in rows]


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Rows as wide as the model's: the stateful phase predicts with a model it created."""
    operation = context.operation
    if operation is None or not isinstance(case.body, dict):
        return case
    if not operation.path.startswith("/v1/dtesn/models/{model_id}/"):
        return case
    record = _model_record((case.path_parameters or {}).get("model_id"))
    if record is None:
        return case
    if "inputs" in case.body:
        case.body["inputs"] = _fit(case.body.get("inputs"), record["input_dim"])
    if "targets" in case.body:
        case.body["targets"] = _fit(case.body.get("targets"), record["output_dim"])
    return case
