"""What crosses vLLM's process boundary, as plain data: the recipe (JSON), the requests (token
prompts and sampling settings) and the answers (prompt log-probabilities, parsed here).

Nothing here imports vLLM; the unit tests cover it without the extra.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from evomerge.evaluate.engines import EngineError
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest, LoglikelihoodResult
from evomerge.recipe import Recipe

# How many top tokens vLLM returns next to the actual one at each prompt position. Greediness is
# decided from these values, not from vLLM's ``rank`` (which counts ties against the actual
# token): see :func:`_is_greedy`. vLLM caps it at ``max_logprobs`` (default 20).
TOP_LOGPROBS = 5


def loglikelihood_sampling() -> dict[str, Any]:
    """``SamplingParams`` keyword arguments for log-likelihood scoring: the prompt's
    log-probabilities and one throwaway greedy token, no text."""
    return {
        "prompt_logprobs": TOP_LOGPROBS,
        "max_tokens": 1,
        "temperature": 0.0,
        "detokenize": False,
    }


def generation_sampling(request: GenerationRequest) -> dict[str, Any]:
    """Greedy decoding settings for one request, as ``SamplingParams`` keyword arguments.

    Stop strings let vLLM stop early; the text itself is rebuilt from the token ids by
    :func:`~evomerge.evaluate.engines.finish_text`, exactly as the transformers engine does."""
    return {
        "temperature": 0.0,
        "max_tokens": request.max_new_tokens,
        "stop": [s for s in request.stop if s] or None,
    }


def loglikelihood_prompts(
    requests: Sequence[LoglikelihoodRequest], max_length: int
) -> list[dict[str, list[int]]]:
    """One token prompt per request (``TokensPrompt`` is a TypedDict: a dict is one), the context
    followed by the continuation. ``max_length`` is the longest scorable prompt: vLLM refuses a
    prompt of ``max_model_len`` tokens, so the engine passes ``max_model_len - 1``."""
    prompts = []
    for i, r in enumerate(requests):
        if not r.context or not r.continuation:
            raise EngineError(f"loglikelihood request {i}: needs a context and a continuation")
        ids = [*r.context, *r.continuation]
        if len(ids) > max_length:
            raise EngineError(
                f"loglikelihood request {i} of {len(requests)}: {len(ids)} tokens, but the "
                f"longest prompt this vLLM engine scores is {max_length} (max_model_len - 1)"
            )
        prompts.append({"prompt_token_ids": ids})
    return prompts


def generation_prompts(
    requests: Sequence[GenerationRequest], max_length: int
) -> list[dict[str, list[int]]]:
    """One token prompt per request; the prompt and its new tokens must fit ``max_length``."""
    prompts = []
    for i, r in enumerate(requests):
        if not r.prompt:
            raise EngineError(f"generation request {i}: empty prompt")
        if len(r.prompt) + r.max_new_tokens > max_length:
            raise EngineError(
                f"generation request {i} of {len(requests)}: {len(r.prompt)} prompt tokens plus "
                f"{r.max_new_tokens} new ones exceed {max_length} (max_model_len - 1)"
            )
        prompts.append({"prompt_token_ids": list(r.prompt)})
    return prompts


def parse_prompt_logprobs(
    prompt_logprobs: Sequence[Mapping[int, Any] | None] | None,
    context_len: int,
    continuation: Sequence[int],
) -> LoglikelihoodResult:
    """Sum the continuation's log-probabilities out of vLLM's ``prompt_logprobs`` and count the
    positions where the actual token is the greedy choice.

    ``prompt_logprobs[i]`` (element 0 is None: the first token has no context) maps token ids to
    objects with ``.logprob``: the actual token and the top :data:`TOP_LOGPROBS`. Only positions
    ``context_len .. context_len + len(continuation) - 1`` are read."""
    if prompt_logprobs is None:
        raise EngineError("vLLM returned no prompt log-probabilities (prompt_logprobs unset?)")
    if context_len < 1 or not continuation:
        raise EngineError("a loglikelihood request needs a context and a continuation")
    end = context_len + len(continuation)
    if len(prompt_logprobs) < end:
        raise EngineError(
            f"vLLM returned log-probabilities for {len(prompt_logprobs)} prompt positions, "
            f"expected at least {end}"
        )
    total, greedy = 0.0, 0
    for pos, token in zip(range(context_len, end), continuation, strict=True):
        entry = prompt_logprobs[pos]
        if not entry or token not in entry:
            raise EngineError(f"vLLM gave no log-probability for token {token} at position {pos}")
        total += float(entry[token].logprob)
        greedy += _is_greedy(entry, token)
    return LoglikelihoodResult(logprob=total, n_tokens=len(continuation), n_greedy=greedy)


def _is_greedy(entry: Mapping[int, Any], token: int) -> bool:
    """Is ``token`` what ``argmax`` picks, as the transformers engine decides it?

    vLLM's ``rank`` counts the tokens whose log-probability is >= the actual one's, so a tie
    gives rank 2 where ``argmax`` may well pick the actual token. ``torch.argmax`` breaks ties by
    the lowest token id: the actual token is greedy when no returned token beats it and no tied
    one has a lower id. This agrees with the transformers engine whenever the tied tokens are
    among the top :data:`TOP_LOGPROBS` (a tie of more tokens than that is not seen); log-probs
    that differ in the last bits between the two engines' kernels can still flip a near-tie."""
    mine = float(entry[token].logprob)
    for other, lp in entry.items():
        v = float(lp.logprob)
        if v > mine or (v == mine and other < token):
            return False
    return True


# -- recipe ----------------------------------------------------------------------------------
def recipe_to_payload(recipe: Recipe) -> str:
    """The recipe as compact JSON for ``collective_rpc``: a few hundred bytes, where the merged
    tensors would be the whole model. Source paths are made absolute so the worker resolves
    them as we do."""
    fixed = {}
    for name, src in recipe.sources.items():
        if src.path.startswith("zoo:"):
            raise EngineError(
                f"source {name!r}: {src.path!r} is a zoo path; resolve it with "
                "recipe.with_zoo(ZOO_DIR) before loading the recipe"
            )
        fixed[name] = src.model_copy(update={"path": os.path.abspath(src.path)})
    data = recipe.model_copy(update={"sources": fixed}).model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def recipe_from_payload(payload: str | bytes | Mapping[str, Any]) -> Recipe:
    """Inverse of :func:`recipe_to_payload`, validated like any recipe."""
    data = json.loads(payload) if isinstance(payload, str | bytes) else dict(payload)
    return Recipe.from_dict(data, origin="recipe sent to the vLLM worker")
