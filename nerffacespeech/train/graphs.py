"""A lazy regulariser's weight gradients replayed from one CUDA graph.

Path length (G) and R1 (D) differentiate twice, which torch.compile cannot do, so their passes
run eagerly: thousands of small kernels launched one at a time from Python (a path-length step
at 256 px took ~0.24 s on an H100, most of it launch overhead). A CUDA graph records the pass
(forward, first backward with create_graph, second backward) once and replays it with a single
launch.

A replay repeats the recorded computation on fixed ("static") tensors, so every input, the
weights included, is copied into them before each replay; shapes and Python-level choices
(resolution, batch, fade) are fixed per graph, so callers keep one graph per such key. Random
draws inside the pass (cameras, ray jitter, the path-length noise) come from the CUDA
generator, which PyTorch advances at each replay by what the recorded kernels consume.
Capturing runs the pass on a side stream first (cuBLAS and cuDNN pick their algorithms there)
and does all of it under a forked RNG, so capturing draws no random numbers: a resumed run that
captures at its first regularised step draws exactly what the uninterrupted run drew.

`GraphSlot` is the one graph a network keeps, and decides per call whether to replay it,
capture a new one or run eagerly.
"""
from __future__ import annotations

from typing import Callable, ContextManager, Hashable

import torch

Tensors = dict[str, torch.Tensor]
Pass = Callable[[Tensors, Tensors], tuple[list[torch.Tensor], Tensors]]
Result = tuple[list[torch.Tensor], Tensors]

WARMUP_PASSES = 2       # eager passes before capture: algorithm selection, cuBLAS workspaces


def _static_copy(tensors: Tensors) -> Tensors:
    return {k: v.detach().clone() for k, v in tensors.items()}


class CapturedGradients:
    """`regulariser(weights, inputs) -> (weight gradients, outputs)` as a CUDA graph.

    It keeps `weights` (fresh copies the caller hands over) as its static weights and copies
    `inputs`. The returned tensors are the graph's own: valid until the next call.
    """

    def __init__(self, regulariser: Pass, weights: Tensors, inputs: Tensors):
        self.weights, self.inputs = weights, _static_copy(inputs)
        device = next(iter(weights.values())).device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.random.fork_rng(devices=[device]):
            with torch.cuda.stream(side):
                for _ in range(WARMUP_PASSES):
                    regulariser(self.weights, self.inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            side.synchronize()
            torch.cuda.empty_cache()    # the side stream's cached blocks would stay reserved for it alone
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the data loader's pin-memory thread keeps making CUDA calls meanwhile;
            # the backward's kernels, launched from autograd's device thread, are still captured
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = regulariser(self.weights, self.inputs)

    def load_weights(self, weights: Tensors) -> None:
        """Copy the current weights (any dtype; e.g. gathered under ZeRO-3) into the static ones."""
        with torch.no_grad():
            torch._foreach_copy_(list(self.weights.values()), [weights[k] for k in self.weights])

    def __call__(self, inputs: Tensors) -> Result:
        """Replay on the loaded weights and these inputs."""
        with torch.no_grad():
            torch._foreach_copy_(list(self.inputs.values()), [inputs[k] for k in self.inputs])
        self.graph.replay()
        return self.outputs


class GraphSlot:
    """At most one captured pass, for the key it was captured with: a call with that key replays
    it on the current weights, another key replaces it, no key (graphs off, or a pass that is
    not repeated) frees it and runs eagerly. The old graph's memory pool is released before the
    new weights are copied, so two graphs' pools never coexist."""

    def __init__(self, owner: str):
        self.owner = owner                  # the network's name, for errors
        self._key: Hashable | None = None
        self._graph: CapturedGradients | None = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def run(self, key: Hashable | None, regulariser: Pass, current: Callable[[], ContextManager[Tensors]],
            copies: Callable[[], Tensors], inputs: Tensors) -> Result:
        """The pass's result on the network's weights: `current()` gives them (inside it they are
        loaded into a replayed graph), `copies()` gives fresh leaf copies to run or capture on."""
        if key is not None and self._graph is not None and self._key == key:
            with current() as weights:
                self._graph.load_weights(weights)
            return self._graph(inputs)
        self._key = self._graph = None
        weights = copies()
        if key is None:
            return regulariser(weights, inputs)
        try:
            graph = CapturedGradients(regulariser, weights, inputs)
        except RuntimeError as error:
            raise RuntimeError(f"{self.owner}: capturing the regulariser's pass in a CUDA graph failed "
                               f"({error}); `cuda_graphs: false` runs it eagerly") from error
        self._key, self._graph = key, graph
        return graph(inputs)
