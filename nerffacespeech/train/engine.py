"""One network under its data-parallel engine (DeepSpeed ZeRO 0-3 or plain DDP), with the two
extra ways of calling it that a GAN needs.

- `frozen()`: run the network with its current weights detached, outside the engine: the
  generator's step runs the discriminator this way (and vice versa), so no gradient and no
  engine hook ever touches the other network.
- `regulariser_grads()`: run a regulariser that needs a double backward (R1: the gradient of
  D(x) with respect to x; path length: of G(w) with respect to w) on leaf copies of the
  weights, differentiated with plain autograd, never inside the engine's hooks; on GPUs the
  pass can replay from a CUDA graph (`graphs.CapturedGradients`). The resulting weight gradients
  go back through `backward(loss, injected=...)`, which adds a zero whose gradient with respect
  to each weight p is its g (`_InjectedGrads`), so the engine reduces, partitions and scales
  them like any other.

Both run a hook-free replica of the module (built on the meta device, so it owns no memory)
through `torch.func.functional_call`; under ZeRO-3 the weights are gathered for the call. Each
mode has its own replica, so the frozen one may be compiled (`frozen_replica`) while the
double-backward one stays eager.
This is what makes R1 and path-length regularisation work at every ZeRO stage (the naive
double backward through a DeepSpeed engine fails at all of them; docs/STYLENERF.md).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

from launcher.runtime import checkpoint
from launcher.runtime.distributed import DistEnv

from .graphs import CapturedGradients

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# (network function, inputs) -> (the penalty whose weight gradients are wanted, outputs to keep)
Regulariser = Callable[[Callable, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on GPUs with compute capability 8.0+ (Ampere, Hopper), fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return "fp32"


@dataclass(frozen=True)
class EngineSpec:
    kind: str                   # deepspeed | ddp
    zero_stage: int
    precision: str              # bf16 | fp16 | fp32 (resolved)
    lr: float
    betas: tuple[float, float]
    eps: float
    micro_batch: int            # per process
    accumulation: int = 1
    find_unused_parameters: bool = False    # DDP: progressive growing leaves blocks unused
    cuda_graphs: bool = False               # replay the regularisers' passes from CUDA graphs
    zero3_persistence_threshold: int = 100_000  # ZeRO-3 keeps tensors smaller than this whole (DeepSpeed's default)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def reg_dtype(self) -> torch.dtype:
        """Regularisers differentiate twice; fp16 has too little range for that, so they run in fp32."""
        return torch.float32 if self.precision == "fp16" else self.dtype


def deepspeed_config(spec: EngineSpec, world_size: int) -> dict:
    """The DeepSpeed config for `spec`. Gradient clipping is off explicitly: DeepSpeed 0.19
    defaults to clipping at 1.0, which StyleGAN-family training does not do. Without clipping
    the gradient norm is unused, and bf16 needs no overflow check (DDP and the original skip
    no step either): both cost ~20 small kernels per weight tensor per step, so they are off."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": spec.micro_batch,
        "gradient_accumulation_steps": spec.accumulation,
        "train_batch_size": spec.micro_batch * spec.accumulation * world_size,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": spec.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": spec.precision == "bf16", "check_grad_overflow": False},
        "fp16": {"enabled": spec.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 10 ** 12,
        "wall_clock_breakdown": False,
    }
    if spec.zero_stage in (1, 2):
        # contiguous gradients copy each gradient into a bucket from a Python hook (~10 small
        # kernels per weight tensor); these networks' gradients are small enough to stay apart
        config["zero_optimization"].update(compute_grad_norm=False, contiguous_gradients=False)
    if spec.zero_stage == 3:
        config["zero_optimization"]["stage3_param_persistence_threshold"] = spec.zero3_persistence_threshold
    return config


def make_optimizer(params, spec: EngineSpec, device: torch.device) -> torch.optim.Optimizer:
    """Adam as StyleGAN2 uses it (betas (0, 0.99), eps 1e-8); fused kernels on CUDA, no JIT build."""
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, **kwargs)


def _match_norm_buffers(module: nn.Module) -> None:
    """Give BatchNorm running statistics their weights' dtype: DeepSpeed 0.19 casts parameters to
    bf16/fp16 but keeps buffers fp32, and batch_norm refuses the mix (older releases cast both)."""
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._NormBase) and norm.weight is not None and norm.track_running_stats:
            norm.running_mean.data = norm.running_mean.to(norm.weight.dtype)
            norm.running_var.data = norm.running_var.to(norm.weight.dtype)


class _InjectedGrads(torch.autograd.Function):
    """A zero whose gradient with respect to each of `params` is the matching tensor of `grads`
    (times the zero's own incoming gradient: loss scale, accumulation). It adds precomputed
    weight gradients to an engine's backward with one fused multiply, where a sum(p * g)
    surrogate costs about ten operators per weight tensor."""

    @staticmethod
    def forward(ctx, grads: list[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:
        ctx.grads, ctx.dtypes = [g.float() for g in grads], [p.dtype for p in params]
        return torch.zeros((), device=params[0].device)

    @staticmethod
    def backward(ctx, scale: torch.Tensor):
        scaled = torch._foreach_mul(ctx.grads, scale)
        return (None, *(g.to(dtype) for g, dtype in zip(scaled, ctx.dtypes)))


def _meta_replica(factory: Callable[[], nn.Module], like: nn.Module) -> nn.Module:
    """A hook-free copy of `like`'s architecture on the meta device (weights come per call)."""
    with torch.device("meta"):
        replica = factory()
    for name in ("activation_checkpointing", "channels_last"):
        if hasattr(like, name):
            setattr(replica, name, getattr(like, name))
    if hasattr(replica, "set_activation_checkpointing"):
        replica.set_activation_checkpointing(False)      # double backward through recomputation: avoided
    return replica.train(like.training)


class Trainable:
    """A network, its optimizer and its engine; see the module docstring for the calling modes."""

    def __init__(self, name: str, module: nn.Module, factory: Callable[[], nn.Module], spec: EngineSpec,
                 env: DistEnv):
        self.name, self.spec, self.env = name, spec, env
        self.scaler = None
        module = module.to(env.device)
        if spec.kind == "deepspeed":
            import deepspeed

            optimizer = make_optimizer(module.parameters(), spec, env.device)
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=module, optimizer=optimizer, config=deepspeed_config(spec, env.world_size),
                dist_init_required=False)
            self.module = self.engine.module
            _match_norm_buffers(self.module)
        else:
            self.module = module
            self.optimizer = make_optimizer(module.parameters(), spec, env.device)
            if env.is_distributed:
                device_ids = [env.device] if env.device.type == "cuda" else None
                self.engine = nn.parallel.DistributedDataParallel(
                    module, device_ids=device_ids, find_unused_parameters=spec.find_unused_parameters)
            else:
                self.engine = module
            if spec.precision == "fp16":
                self.scaler = torch.amp.GradScaler(env.device.type)
        self.replica = _meta_replica(factory, self.module)
        self.frozen_replica = _meta_replica(factory, self.module)
        self._param_names = [n for n, _ in self.module.named_parameters()]
        self._captured: tuple[Any, CapturedGradients] | None = None     # (graph key, regulariser graph)
        self._micro = 0
        self._pending: list[torch.Tensor] | None = None        # DDP: injected gradients for the next step

    # ------------------------------------------------------------------ calling the network

    def _autocast(self, dtype: torch.dtype | None = None, cache: bool = True):
        """DDP trains fp32 weights under autocast; DeepSpeed's weights are already in their dtype.
        (CUDA graph capture needs `cache` off.)"""
        dtype = dtype or self.spec.dtype
        if self.spec.kind == "ddp" and dtype != torch.float32:
            return torch.autocast(self.env.device.type, dtype=dtype, cache_enabled=cache)
        return contextlib.nullcontext()

    def __call__(self, *args, **kwargs):
        """The training forward, through the engine (its gradients reach this network's weights)."""
        with self._autocast():
            return self.engine(*args, **kwargs)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[dict[str, torch.Tensor]]:
        """Full weights and buffers by name (gathered under ZeRO-3), valid inside the context."""
        params = dict(self.module.named_parameters())
        buffers = dict(self.module.named_buffers())
        if self.spec.kind == "deepspeed" and self.spec.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
                yield {**params, **buffers}
        else:
            yield {**params, **buffers}

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Callable]:
        """A function running the network on detached weights, outside the engine."""
        copy = self.spec.kind == "deepspeed" and self.spec.zero_stage == 3   # gathered storage is freed on exit
        with self.gathered() as tensors:
            weights = {k: (v.detach().clone() if copy else v.detach()) for k, v in tensors.items()}

        def run(*args, **kwargs):
            with self._autocast():
                return functional_call(self.frozen_replica, weights, args, kwargs, strict=True)

        yield run

    def regulariser_grads(self, regulariser: Regulariser, inputs: dict[str, torch.Tensor],
                          graph_key: Any = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Weight gradients (zeros where unused) of the penalty `regulariser(network, inputs)`
        returns, and its other outputs (detached), for `backward(..., injected=)`.

        With a `graph_key` and CUDA graphs on, the pass replays from a graph captured for that
        key and regulariser (one at a time: another key replaces it, no key frees it); the key
        must name everything the pass fixes besides the tensors in `inputs` (resolution, batch,
        fade). Results stay valid until the next call. Weights are copied inside the ZeRO-3
        gather and the pass runs after it, so gathered weights and copies never coexist long.
        """
        key = (regulariser.__name__, graph_key) if graph_key is not None and self.spec.cuda_graphs else None
        if key is None or self._captured is None or self._captured[0] != key:
            self._captured = None                       # its memory pool goes before anything else is made
            with self.gathered() as tensors:
                weights = self._leaf_copies(tensors)
            if key is None:
                return self._regulariser_pass(regulariser, weights, inputs)
            try:
                graph = CapturedGradients(functools.partial(self._regulariser_pass, regulariser), weights, inputs)
            except RuntimeError as error:
                raise RuntimeError(f"{self.name}: capturing the regulariser's pass in a CUDA graph failed "
                                   f"({error}); `cuda_graphs: false` runs it eagerly") from error
            self._captured = (key, graph)
        else:
            with self.gathered() as tensors:
                self._captured[1].load_weights(tensors)
        return self._captured[1](inputs)

    def _leaf_copies(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copies of the weights (leaves that require grad) and buffers, in the regulariser dtype."""
        weight_dtype = torch.float32 if self.spec.kind == "ddp" else self.spec.reg_dtype   # DDP: fp32, autocast
        copies = {k: v.detach().to(weight_dtype if v.is_floating_point() else v.dtype, copy=True)
                  for k, v in tensors.items()}
        for name in self._param_names:
            copies[name].requires_grad_()
        return copies

    def _regulariser_pass(self, regulariser: Regulariser, weights: dict[str, torch.Tensor],
                          inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        def network(*args, **kwargs):
            with self._autocast(self.spec.reg_dtype, cache=False):
                return functional_call(self.replica, weights, args, kwargs, strict=True)

        penalty, outputs = regulariser(network, inputs)
        grads = torch.autograd.grad(penalty, [weights[n] for n in self._param_names], allow_unused=True,
                                    materialize_grads=True)
        # detached: torch < 2.13 materialises unused weights' zeros with requires_grad set
        return [g.detach() for g in grads], {k: v.detach() for k, v in outputs.items()}

    # ------------------------------------------------------------------ training

    def backward(self, loss: torch.Tensor, injected: list[torch.Tensor] | None = None) -> None:
        """Backward of one micro-batch's mean loss, plus whole-step weight gradients `injected`
        (from `regulariser_grads`) on the first micro-batch of a step."""
        accumulation = self.spec.accumulation
        last = self._micro == accumulation - 1
        inject = injected is not None and self._micro == 0
        if self.spec.kind == "deepspeed":
            with self._maybe_gathered(inject) as params:
                if inject:
                    # DeepSpeed divides the loss by the accumulation; the injected total must not be
                    loss = loss + _InjectedGrads.apply(injected, *params) * accumulation
                self.engine.backward(loss)
            if not last:
                self.engine.step()      # DeepSpeed counts micro-batches in step(); it updates only at the boundary
        else:
            if inject:
                self._pending = _mean_over_ranks(injected, self.env)
            loss = loss / accumulation
            if self.scaler is not None:
                loss = self.scaler.scale(loss)
            sync = contextlib.nullcontext() if last or not hasattr(self.engine, "no_sync") else self.engine.no_sync()
            with sync:
                loss.backward()
        self._micro = 0 if last else self._micro + 1

    @contextlib.contextmanager
    def _maybe_gathered(self, gather: bool) -> Iterator[list[torch.Tensor]]:
        params = list(self.module.parameters())
        if gather and self.spec.kind == "deepspeed" and self.spec.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield params
        else:
            yield params

    def step(self) -> None:
        """The optimizer step, after the last micro-batch's `backward`."""
        if self._micro != 0:
            raise RuntimeError(f"{self.name}: step() after {self._micro} of {self.spec.accumulation} micro-batches")
        if self.spec.kind == "deepspeed":
            self.engine.step()
            return
        if self._pending is not None:
            # DDP marks every weight ready exactly once per backward, so the injected (already
            # averaged) gradients are added to the reduced ones here instead of through the loss
            scale = self.loss_scale
            for p, g in zip(self.module.parameters(), self._pending):
                p.grad = g.to(p.dtype) * scale if p.grad is None else p.grad.add_(g.to(p.dtype), alpha=scale)
            self._pending = None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def loss_scale(self) -> float:
        """The dynamic fp16 loss scale (1.0 in bf16/fp32)."""
        if self.scaler is not None:
            return float(self.scaler.get_scale())
        if self.spec.kind == "deepspeed" and self.spec.precision == "fp16":
            return float(getattr(self.optimizer, "cur_scale", getattr(self.optimizer, "loss_scale", 1.0)))
        return 1.0

    def checkpoint_state(self) -> dict[str, Any]:
        """Adapters for launcher.runtime.checkpoint under this network's name."""
        if self.spec.kind == "deepspeed":
            return {self.name: checkpoint.DeepSpeedState(self.engine)}
        state = {self.name: checkpoint.ModuleState(self.module),
                 f"{self.name}_optim": checkpoint.OptimizerState(self.optimizer)}
        if self.scaler is not None:
            state[f"{self.name}_scaler"] = checkpoint.OptimizerState(self.scaler)
        return state


def _mean_over_ranks(tensors: list[torch.Tensor], env: DistEnv) -> list[torch.Tensor]:
    """The average of each tensor over the ranks, in one flat all-reduce."""
    if not env.is_distributed:
        return tensors
    flat = torch.cat([t.detach().float().flatten() for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= env.world_size
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
