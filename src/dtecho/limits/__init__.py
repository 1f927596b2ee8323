"""Per-principal and per-(principal, model) limits: requests, tokens, concurrency, budgets.

::

    from dtecho.limits import build_limiter

    limiter = build_limiter(settings.limits, redis_client)  # Local, or Resilient(Redis, Local)
    decision = await limiter.admit(principal.id, model, principal.limits, model_limits, tokens)
    if not decision.allowed:
        ...  # 429 with decision.message and decision.headers
    ...
    await limiter.settle(decision.ticket, actual_tokens)

Two scopes per decision, the principal on all models and the principal on one model; a
request passes only if every configured limit of both allows it, and a refused request
records nothing. On Redis each decision is one Lua script run on Redis's clock, so replicas
share exact counts. Nothing here imports the web stack.
"""

from dtecho.limits.decision import Backend, Decision, Limiter, Outcome, Reason, Ticket
from dtecho.limits.factory import UnlimitedLimiter, build_limiter
from dtecho.limits.headers import format_duration, rate_limit_headers
from dtecho.limits.local import LocalLimiter
from dtecho.limits.redis_limiter import REDIS_ERRORS, RedisLimiter
from dtecho.limits.resilient import ResilientLimiter

__all__ = [
    "REDIS_ERRORS",
    "Backend",
    "Decision",
    "Limiter",
    "LocalLimiter",
    "Outcome",
    "Reason",
    "RedisLimiter",
    "ResilientLimiter",
    "Ticket",
    "UnlimitedLimiter",
    "build_limiter",
    "format_duration",
    "rate_limit_headers",
]
