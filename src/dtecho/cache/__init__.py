"""Response cache: L1 in-process LRU → L2 zstd-compressed → L3 Redis shared by replicas.

::

    from dtecho.cache import ResponseCache, cache_key

    async with ResponseCache(settings.cache, settings.cache_redis_url) as cache:
        key = cache_key(namespace, "/v1/dtesn/process", model, version, params)
        value, tier = await cache.get_or_compute(key, compute, tags=("dtesn",), model=model)

No web framework is imported here; the server wires the cache into its routes.
"""

from dtecho.cache.codec import CorruptEntry
from dtecho.cache.keys import cache_key, canonical_json
from dtecho.cache.manager import CacheHit, HitTier, ResponseCache, ResultTier
from dtecho.cache.policy import CachePolicy

__all__ = [
    "CacheHit",
    "CachePolicy",
    "CorruptEntry",
    "HitTier",
    "ResponseCache",
    "ResultTier",
    "cache_key",
    "canonical_json",
]
