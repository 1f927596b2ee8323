"""Request → SamplingParams mapping and cumulative-output deltas of the in-process engine.

vLLM and Aphrodite need a GPU, which this machine lacks, so their ``RequestOutput`` objects are
stood in for by small records with the same fields (index, text, token_ids, finish_reason). The
engine itself runs only where those packages are installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtecho.engines.base import SamplingParams
from dtecho.engines.inprocess import DEFAULT_MAX_TOKENS, OutputDeltas, sampling_kwargs


@dataclass
class CompletionOutput:  # the fields vllm.CompletionOutput carries that we read
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


def test_sampling_kwargs_map_every_field() -> None:
    params = SamplingParams(
        max_tokens=12, temperature=0.3, top_p=0.9, n=2, stop=("\n",), seed=7, logprobs=3
    )
    assert sampling_kwargs(params) == {
        "n": 2, "temperature": 0.3, "top_p": 0.9, "max_tokens": 12, "stop": ["\n"],
        "seed": 7, "logprobs": 3,
    }  # fmt: skip


def test_sampling_kwargs_defaults() -> None:
    kwargs = sampling_kwargs(SamplingParams())
    assert kwargs["max_tokens"] == DEFAULT_MAX_TOKENS
    assert "logprobs" not in kwargs
    assert kwargs["seed"] is None


def test_cumulative_outputs_become_deltas_per_choice() -> None:
    deltas = OutputDeltas(2)
    first = deltas.update([CompletionOutput(0, "He", [1, 2]), CompletionOutput(1, "Yo", [3])])
    assert [(c.index, c.text, c.tokens) for c in first] == [(0, "He", 2), (1, "Yo", 1)]
    second = deltas.update(
        [CompletionOutput(0, "Hello", [1, 2, 3], "stop"), CompletionOutput(1, "Yo", [3])]
    )
    assert [(c.index, c.text, c.tokens, c.finish_reason) for c in second] == [(0, "llo", 1, "stop")]
    third = deltas.update(
        [
            CompletionOutput(0, "Hello", [1, 2, 3], "stop"),
            CompletionOutput(1, "Yo!", [3, 4], "length"),
        ]
    )
    assert [(c.index, c.text, c.finish_reason) for c in third] == [(1, "!", "length")]
