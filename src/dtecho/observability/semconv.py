"""Span names, attribute keys and event names of dtecho's traces.

Standard names follow OpenTelemetry's semantic conventions as ``opentelemetry-semantic-
conventions`` 0.66b2 spells them: stable HTTP, URL, server, client and error attributes, and
the GenAI attributes (``gen_ai.*``, since moved to their own repository, the current names kept:
``gen_ai.provider.name`` replaces the deprecated ``gen_ai.system``). Names of our own are under
``dtecho.``. Plain strings, so that importing this module loads nothing.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------- HTTP (stable)
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_REQUEST_METHOD_ORIGINAL: Final = "http.request.method_original"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"
USER_AGENT_ORIGINAL: Final = "user_agent.original"
ERROR_TYPE: Final = "error.type"

# --------------------------------------------------------------------------- GenAI
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"  # seconds
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_EMBEDDINGS_DIMENSION_COUNT: Final = "gen_ai.embeddings.dimension.count"

# gen_ai.operation.name values
OP_CHAT: Final = "chat"
OP_TEXT_COMPLETION: Final = "text_completion"
OP_EMBEDDINGS: Final = "embeddings"

# gen_ai.provider.name: the convention's well-known "openai" for OpenAI's own API; any other
# OpenAI-compatible upstream (vLLM, Aphrodite, llama.cpp) is named by what it is, and the
# native engine is "dtecho".
PROVIDER_DTECHO: Final = "dtecho"
PROVIDER_OPENAI: Final = "openai"

# --------------------------------------------------------------------------- dtecho spans
SPAN_AUTH: Final = "dtecho.auth"  # principal from API key / JWT
SPAN_LIMITS: Final = "dtecho.limits"  # rate/token/concurrency admission
SPAN_CACHE_LOOKUP: Final = "dtecho.cache.lookup"
SPAN_BATCH_WAIT: Final = "dtecho.batch.wait"  # enqueue → the batch holding this request ran
SPAN_DTESN: Final = "dtecho.dtesn.process"
# Model calls (engine generation, upstream attempts) are named "{operation} {model}", the
# GenAI convention: see tracing.genai_span_name.

# --------------------------------------------------------------------------- dtecho attributes
AUTH_METHOD: Final = "dtecho.auth.method"  # api_key, jwt, none
AUTH_RESULT: Final = "dtecho.auth.result"  # ok, denied
PRINCIPAL: Final = "dtecho.principal"  # an id, never a key or a token
LIMITS_DECISION: Final = "dtecho.limits.decision"  # admitted, limited
CACHE_TIER: Final = "dtecho.cache.tier"  # l1, l2, l3, or none on a miss
CACHE_HIT: Final = "dtecho.cache.hit"  # bool
CACHE_SINGLE_FLIGHT: Final = "dtecho.cache.single_flight"  # bool: waited on another's compute
BATCH_SIZE: Final = "dtecho.batch.size"  # requests in the batch this one ran in
BATCH_QUEUE_DEPTH: Final = "dtecho.batch.queue_depth"
DTESN_STEPS: Final = "dtecho.dtesn.steps"
DTESN_UNITS: Final = "dtecho.dtesn.units"
DTESN_MEMBRANES: Final = "dtecho.dtesn.membranes"
DTESN_INTEGRATOR: Final = "dtecho.dtesn.integrator"  # e.g. rk4
DTESN_INTEGRATOR_ORDER: Final = "dtecho.dtesn.integrator_order"
MODEL: Final = "dtecho.model"  # the served model name the client asked for
DEPLOYMENT: Final = "dtecho.deployment"
ATTEMPT: Final = "dtecho.attempt"  # 1 for the first try of a request
HEDGE: Final = "dtecho.hedge"  # bool: this attempt is a hedge
CANCELLED: Final = "dtecho.cancelled"  # bool: the span's work was cancelled (hedge loser)
REQUEST_ID: Final = "dtecho.request_id"

# --------------------------------------------------------------------------- span events
EVENT_RETRY: Final = "dtecho.retry"  # attributes: ATTEMPT, DEPLOYMENT, ERROR_TYPE, RETRY_DELAY_S
EVENT_HEDGE: Final = "dtecho.hedge"  # a hedge attempt started: DEPLOYMENT, HEDGE_DELAY_S
EVENT_BREAKER: Final = "dtecho.breaker"  # a breaker refused or changed: DEPLOYMENT, BREAKER_STATE
EVENT_FALLBACK: Final = "dtecho.fallback"  # MODEL (the fallback's), ERROR_TYPE
EVENT_FIRST_CHUNK: Final = "dtecho.first_chunk"  # a stream's first chunk reached the client
RETRY_DELAY_S: Final = "dtecho.retry.delay_s"
HEDGE_DELAY_S: Final = "dtecho.hedge.delay_s"
BREAKER_STATE: Final = "dtecho.breaker.state"  # closed, open, half_open
BREAKER_DECISION: Final = "dtecho.breaker.decision"  # refused, opened, closed, half_opened
