"""One network under its data-parallel engine, behind one interface (`Trainable`) with the two
extra ways of calling it that a GAN needs. `make_trainable` picks the engine once, from the spec:
`DDPTrainable` (plain DistributedDataParallel), `DeepSpeedTrainable` (ZeRO 0-2) or
`Zero3Trainable` (ZeRO-3, whose weights exist whole only while gathered).

- `net(...)`, `backward(loss, injected=)`, `step()`: the training forward through the engine,
  one micro-batch's backward, the optimizer step after the last micro-batch.
- `frozen()`: run the network with its current weights detached, outside the engine: the
  generator's step runs the discriminator this way (and vice versa), so no gradient and no
  engine hook ever touches the other network.
- `regulariser_grads()`: run a regulariser that needs a double backward (R1: the gradient of
  D(x) with respect to x; path length: of G(w) with respect to w) on leaf copies of the
  weights, differentiated with plain autograd, never inside the engine's hooks; on GPUs the
  pass can replay from a CUDA graph (`graphs.GraphSlot`). The resulting weight gradients go
  back through `backward(loss, injected=...)`: DeepSpeed takes them as a zero whose gradient
  with respect to each weight p is its g (`_InjectedGrads`), so the engine reduces, partitions
  and scales them like any other; DDP adds them, averaged over the ranks, before the step.
- `gathered()`, `loss_scale`, `checkpoint_state()`: full weights by name, the fp16 loss scale,
  the checkpoint adapters.

Both calling modes run a hook-free replica of the module (built on the meta device, so it owns
no memory) through `torch.func.functional_call`; under ZeRO-3 the weights are gathered for the
call. Each mode has its own replica, so the frozen one may be compiled (`frozen_replica`) while
the double-backward one stays eager.
This is what makes R1 and path-length regularisation work at every ZeRO stage (the naive
double backward through a DeepSpeed engine fails at all of them; docs/STYLENERF.md).
"""
from __future__ import annotations

import abc
import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn
from torch.func import functional_call

from launcher.runtime import checkpoint
from launcher.runtime.distributed import DistEnv

from .graphs import GraphSlot

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
    zero_stage: int             # DeepSpeed's ZeRO stage; 0 for DDP (the configs refuse another)
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

    @property
    def label(self) -> str:
        """The engine as a log line names it: `ddp`, `deepspeed (ZeRO 2)`."""
        return f"deepspeed (ZeRO {self.zero_stage})" if self.kind == "deepspeed" else self.kind


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


def make_trainable(name: str, module: nn.Module, factory: Callable[[], nn.Module], spec: EngineSpec,
                   env: DistEnv) -> "Trainable":
    """`module` (built by `factory`, which the replicas reuse) under the engine `spec` names;
    the only place that reads the engine kind and the ZeRO stage."""
    if spec.kind == "ddp":
        return DDPTrainable(name, module, factory, spec, env)
    if spec.kind != "deepspeed":
        raise ValueError(f"{name}: engine must be 'ddp' or 'deepspeed', got {spec.kind!r}")
    return (Zero3Trainable if spec.zero_stage == 3 else DeepSpeedTrainable)(name, module, factory, spec, env)


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


# ---------------------------------------------------------------------------------- the interface

class Trainable(abc.ABC):
    """A network, its optimizer and its engine; see the module docstring for the calling modes.
    Subclasses build the engine and supply its backward, step, precision and checkpoint state."""

    def __init__(self, name: str, module: nn.Module, engine: Callable, optimizer: torch.optim.Optimizer,
                 factory: Callable[[], nn.Module], spec: EngineSpec, env: DistEnv):
        self.name, self.spec, self.env = name, spec, env
        self.module, self.engine, self.optimizer = module, engine, optimizer
        self.replica = _meta_replica(factory, module)
        self.frozen_replica = _meta_replica(factory, module)
        self.graphs = GraphSlot(name)
        self._param_names = [n for n, _ in module.named_parameters()]
        self._micro = 0

    # ------------------------------------------------------------------ calling the network

    @property
    @abc.abstractmethod
    def regulariser_weights_dtype(self) -> torch.dtype:
        """The dtype of the weights' leaf copies a regulariser runs on."""

    @abc.abstractmethod
    def _autocast(self, dtype: torch.dtype | None = None, cache: bool = True) -> ContextManager:
        """The context the network computes in at `dtype` (the spec's by default; CUDA graph
        capture needs `cache` off)."""

    def __call__(self, *args, **kwargs):
        """The training forward, through the engine (its gradients reach this network's weights)."""
        with self._autocast():
            return self.engine(*args, **kwargs)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[dict[str, torch.Tensor]]:
        """Full weights and buffers by name, valid inside the context."""
        yield {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}

    def _detached(self) -> dict[str, torch.Tensor]:
        """The current weights and buffers, detached; valid after the gather ends."""
        with self.gathered() as tensors:
            return {k: v.detach() for k, v in tensors.items()}

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Callable]:
        """A function running the network on detached weights, outside the engine."""
        weights = self._detached()

        def run(*args, **kwargs):
            with self._autocast():
                return functional_call(self.frozen_replica, weights, args, kwargs, strict=True)

        yield run

    def regulariser_grads(self, regulariser: Regulariser, inputs: dict[str, torch.Tensor],
                          graph_key: Any = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Weight gradients (zeros where unused) of the penalty `regulariser(network, inputs)`
        returns, and its other outputs (detached), for `backward(..., injected=)`.

        With a `graph_key` and CUDA graphs on, the pass replays from a graph captured for that
        key and regulariser (`GraphSlot`: one at a time); the key must name everything the pass
        fixes besides the tensors in `inputs` (resolution, batch, fade). Results stay valid until
        the next call. Weights are copied inside the ZeRO-3 gather and the pass runs after it,
        so gathered weights and copies never coexist long.
        """
        key = (regulariser.__name__, graph_key) if graph_key is not None and self.spec.cuda_graphs else None
        return self.graphs.run(key, functools.partial(self._regulariser_pass, regulariser), self.gathered,
                               self._leaf_copies, inputs)

    def _leaf_copies(self) -> dict[str, torch.Tensor]:
        """Copies of the weights (leaves that require grad) and buffers, made inside the gather."""
        with self.gathered() as tensors:
            copies = {k: v.detach().to(self.regulariser_weights_dtype if v.is_floating_point() else v.dtype,
                                       copy=True)
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
        last = self._micro == self.spec.accumulation - 1
        self._backward(loss, injected if self._micro == 0 else None, last)
        self._micro = 0 if last else self._micro + 1

    @abc.abstractmethod
    def _backward(self, loss: torch.Tensor, injected: list[torch.Tensor] | None, last: bool) -> None:
        """The engine's backward of one micro-batch (`last`: the step's last), `injected` on the first."""

    def step(self) -> torch.Tensor | None:
        """The optimizer step, after the last micro-batch's `backward`; returns 1.0 (a device
        scalar) when this step's gradient was non-finite and zeroed (on every rank, whichever
        partition held it), None in fp16 (DeepSpeed's loss scaler and DDP's GradScaler skip such
        steps)."""
        if self._micro != 0:
            raise RuntimeError(f"{self.name}: step() after {self._micro} of {self.spec.accumulation} micro-batches")
        return self._step()

    @abc.abstractmethod
    def _step(self) -> torch.Tensor | None:
        """The engine's optimizer step (see `step`)."""

    @property
    @abc.abstractmethod
    def loss_scale(self) -> float:
        """The dynamic fp16 loss scale (1.0 in bf16/fp32)."""

    @abc.abstractmethod
    def checkpoint_state(self) -> dict[str, Any]:
        """Adapters for launcher.runtime.checkpoint under this network's name."""


# ---------------------------------------------------------------------------------- DDP

class DDPTrainable(Trainable):
    """Plain DistributedDataParallel (the module itself in one process): fp32 weights trained
    under autocast, with a GradScaler in fp16."""

    regulariser_weights_dtype = torch.float32          # the autocast casts them per operator

    def __init__(self, name: str, module: nn.Module, factory: Callable[[], nn.Module], spec: EngineSpec,
                 env: DistEnv):
        module = module.to(env.device)
        optimizer = make_optimizer(module.parameters(), spec, env.device)
        engine = module
        if env.is_distributed:
            device_ids = [env.device] if env.device.type == "cuda" else None
            engine = nn.parallel.DistributedDataParallel(
                module, device_ids=device_ids, find_unused_parameters=spec.find_unused_parameters)
        self.scaler = torch.amp.GradScaler(env.device.type) if spec.precision == "fp16" else None
        self._pending: list[torch.Tensor] | None = None        # injected gradients for the next step
        super().__init__(name, module, engine, optimizer, factory, spec, env)

    def _autocast(self, dtype: torch.dtype | None = None, cache: bool = True) -> ContextManager:
        dtype = dtype or self.spec.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=dtype, cache_enabled=cache)

    def _backward(self, loss: torch.Tensor, injected: list[torch.Tensor] | None, last: bool) -> None:
        if injected is not None:
            self._pending = _mean_over_ranks(injected, self.env)
        loss = loss / self.spec.accumulation
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        sync = contextlib.nullcontext() if last or not hasattr(self.engine, "no_sync") else self.engine.no_sync()
        with sync:
            loss.backward()

    def _step(self) -> torch.Tensor | None:
        if self._pending is not None:
            # DDP marks every weight ready exactly once per backward, so the injected (already
            # averaged) gradients are added to the reduced ones here instead of through the loss
            scale = self.loss_scale
            for p, g in zip(self.module.parameters(), self._pending):
                p.grad = g.to(p.dtype) * scale if p.grad is None else p.grad.add_(g.to(p.dtype), alpha=scale)
            self._pending = None
        found = None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            found = zero_non_finite([p.grad for p in self.module.parameters() if p.grad is not None])
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return found

    @property
    def loss_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def checkpoint_state(self) -> dict[str, Any]:
        state = {self.name: checkpoint.ModuleState(self.module),
                 f"{self.name}_optim": checkpoint.OptimizerState(self.optimizer)}
        if self.scaler is not None:
            state[f"{self.name}_scaler"] = checkpoint.OptimizerState(self.scaler)
        return state


def zero_non_finite(grads: list[torch.Tensor]) -> torch.Tensor:
    """Zero NaN and clamp infinities in `grads` in place (as StyleGAN2-ADA does before each
    update: one sample's NaN must not reach every weight through Adam); 1.0 when any element was
    non-finite, as a device scalar (no host sync). The max-abs norm cannot overflow as a sum of
    squares could, so finite gradients are never counted."""
    if not grads:
        return torch.zeros(())
    found = torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all().logical_not().float()
    for grad in grads:
        torch.nan_to_num(grad, nan=0.0, posinf=1e5, neginf=-1e5, out=grad)
    return found


def _mean_over_ranks(tensors: list[torch.Tensor], env: DistEnv) -> list[torch.Tensor]:
    """The average of each tensor over the ranks, in one flat all-reduce."""
    if not env.is_distributed:
        return tensors
    flat = torch.cat([t.detach().float().flatten() for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= env.world_size
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


# ---------------------------------------------------------------------------------- DeepSpeed

class DeepSpeedTrainable(Trainable):
    """A DeepSpeed engine (ZeRO 0-2 here; 3 below): weights already in the training dtype, no
    autocast; DeepSpeed scales, reduces and partitions the gradients and counts micro-batches."""

    def __init__(self, name: str, module: nn.Module, factory: Callable[[], nn.Module], spec: EngineSpec,
                 env: DistEnv):
        import deepspeed

        module = module.to(env.device)
        base = make_optimizer(module.parameters(), spec, env.device)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=base, config=deepspeed_config(spec, env.world_size),
            dist_init_required=False)
        _match_norm_buffers(engine.module)
        self._found: torch.Tensor | None = None         # this step's non-finite flag, set by the guard
        if spec.precision != "fp16":                    # fp16: DeepSpeed's loss scaler skips such steps
            base.register_step_pre_hook(self._zero_non_finite_partition)
        super().__init__(name, engine.module, engine, optimizer, factory, spec, env)

    def _zero_non_finite_partition(self, base: torch.optim.Optimizer, args, kwargs) -> None:
        """Before the wrapped Adam updates: zero the non-finite values of the gradients it holds
        (the reduced ones, or this rank's partition of them under ZeRO), as DDP does. DeepSpeed
        steps its groups one at a time, so the flag is the maximum over the calls of a step."""
        found = zero_non_finite([p.grad for group in base.param_groups for p in group["params"]
                                 if p.grad is not None]).to(self.env.device)
        self._found = found if self._found is None else torch.maximum(self._found, found)

    @property
    def regulariser_weights_dtype(self) -> torch.dtype:
        return self.spec.reg_dtype

    def _autocast(self, dtype: torch.dtype | None = None, cache: bool = True) -> ContextManager:
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor, injected: list[torch.Tensor] | None, last: bool) -> None:
        if injected is None:
            self.engine.backward(loss)
        else:
            with self.gathered() as tensors:
                params = [tensors[n] for n in self._param_names]
                # DeepSpeed divides the loss by the accumulation; the injected total must not be
                self.engine.backward(loss + _InjectedGrads.apply(injected, *params) * self.spec.accumulation)
        if not last:
            self.engine.step()      # DeepSpeed counts micro-batches in step(); it updates only at the boundary

    def _step(self) -> torch.Tensor | None:
        self.engine.step()
        if self.spec.precision == "fp16":
            return None             # DeepSpeed's loss scaler skipped a non-finite step
        found, self._found = self._found, None
        if getattr(self.optimizer, "overflow", False):
            # ZeRO-3 takes the global gradient norm at every step and skips the step on a
            # non-finite one before Adam (and the guard) runs; every rank agrees on it
            return torch.ones((), device=self.env.device)
        if found is None:
            found = torch.zeros((), device=self.env.device)
        if self.env.is_distributed:
            # a partition's flag is its rank's own: every rank reports the step the same way
            torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)
        return found

    @property
    def loss_scale(self) -> float:
        if self.spec.precision != "fp16":
            return 1.0
        return float(getattr(self.optimizer, "cur_scale", getattr(self.optimizer, "loss_scale", 1.0)))

    def checkpoint_state(self) -> dict[str, Any]:
        return {self.name: checkpoint.DeepSpeedState(self.engine)}


class Zero3Trainable(DeepSpeedTrainable):
    """ZeRO-3: each rank holds a partition of every weight, so full weights exist only inside
    `GatheredParameters` (the injected gradients' zero is built there too)."""

    @contextlib.contextmanager
    def gathered(self) -> Iterator[dict[str, torch.Tensor]]:
        import deepspeed

        params = dict(self.module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            yield {**params, **dict(self.module.named_buffers())}

    def _detached(self) -> dict[str, torch.Tensor]:
        with self.gathered() as tensors:
            return {k: v.detach().clone() for k, v in tensors.items()}     # gathered storage is freed on exit


def _match_norm_buffers(module: nn.Module) -> None:
    """Give BatchNorm running statistics their weights' dtype: DeepSpeed 0.19 casts parameters to
    bf16/fp16 but keeps buffers fp32, and batch_norm refuses the mix (older releases cast both)."""
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._NormBase) and norm.weight is not None and norm.track_running_stats:
            norm.running_mean.data = norm.running_mean.to(norm.weight.dtype)
            norm.running_var.data = norm.running_var.to(norm.weight.dtype)
