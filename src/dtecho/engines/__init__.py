"""Engines: native DTESN, OpenAI-compatible upstreams, in-process Aphrodite/vLLM."""
