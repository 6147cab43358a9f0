"""One process's part of a step when a batch is shared: micro-batches, DDP or FSDP2, mixed precision, state.

:class:`ShardedStepper` is the loop's ``Stepper`` for ``training.distributed`` (``loop.OneProcess`` is the default).
Every process draws the same global batch (the loop's length-grouped stream is seeded), cuts it into
``processes x gradient_accumulation`` equal micro-batches and runs its own ``gradient_accumulation`` of them. Each
micro-batch's mean loss is weighted by its share of the batch's scored tokens (times the world size, which the
gradient average divides out again), so the summed gradient is the gradient of the batch's mean loss: the step one
process takes on the whole batch, up to the order of float additions. The reported loss and tokens are summed over
the processes.

The loss runs inside one wrapped module (:class:`LossModule`): DistributedDataParallel and FSDP2 do their work
(gradient hooks, gathering shards) around a module's ``forward``, and the answer-only loss calls parts of the model
directly. Under FSDP2 (``torch.distributed.fsdp.fully_shard``: each decoder layer its own unit, the rest the root
unit) the trainable state and the optimizer state are gathered to full tensors with torch's
``distributed.checkpoint.state_dict`` functions, so that a checkpoint holds the whole adapter whatever the sharding.

With ``strategy: none`` the same stepper runs in the node's own process (world size 1) when gradient accumulation,
mixed precision or activation checkpointing is asked for.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adapter_registry.recipes.schema import DistributedSpec
from adapter_registry.training.features import IGNORE, Feature, collate
from adapter_registry.training.loop import LossFn, _trainable_state

PREFIX = "model."  # the wrapped model's key prefix inside LossModule


class LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so that a DDP or FSDP wrapper sees the whole forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def scored(feature: Feature) -> int:
    """The items a row's mean loss averages over: its answer tokens after the shift (causal LM), or one row."""
    labels = feature.get("labels")
    return 1 if labels is None else sum(1 for label in labels[1:] if label != IGNORE)


def micro_batches(n: int, parts: int) -> list[list[int]]:
    """``range(n)`` cut into ``parts`` contiguous runs whose sizes differ by one at most (some empty when n < parts)."""
    size, extra = divmod(n, parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer in the backward pass (transformers' activation checkpointing, non-reentrant: it
    needs no input that requires grad, and works under DDP and FSDP)."""
    peft: Any = model
    causal = peft.get_base_model() if hasattr(peft, "get_base_model") else peft
    causal.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _layer_classes(model: nn.Module) -> set[str]:
    """The class names transformers keeps whole on one device (``_no_split_modules``: the decoder layers)."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


class ShardedStepper:
    """The loop's steps for one of ``world`` processes (or the only one): see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        spec: DistributedSpec,
        rank: int = 0,
        world: int = 1,
        device: torch.device | None = None,
    ) -> None:
        self.spec, self.rank, self.world = spec, rank, world
        self.device = device or torch.device("cpu")
        self.is_main = rank == 0
        self.accumulation = spec.gradient_accumulation
        if spec.activation_checkpointing:
            enable_activation_checkpointing(model)
        module: nn.Module = LossModule(model, loss_fn)
        if spec.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        elif spec.strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (world,))
            layers = _layer_classes(model)
            for sub in model.modules():
                if type(sub).__name__ in layers:
                    fully_shard(sub, mesh=mesh)
            fully_shard(module, mesh=mesh)
        self.module = module
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.mixed_precision)
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if dtype == torch.float16 else None

    # ------------------------------------------------------------------------------------------ loop.Stepper
    def step(
        self,
        model: nn.Module,
        rows: Sequence[Feature],
        pad_id: int,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float,
    ) -> tuple[float, int]:
        weights = [scored(r) for r in rows]
        total = sum(weights) or 1
        parts = micro_batches(len(rows), self.world * self.accumulation)
        mine = parts[self.rank * self.accumulation : (self.rank + 1) * self.accumulation]
        loss_sum, tokens = 0.0, 0
        for i, part in enumerate(mine):
            n = sum(weights[j] for j in part)
            # a process whose micro-batch scores nothing still runs one (weighted 0): the others wait for its
            # gradients (DDP) or its share of the parameters (FSDP)
            batch = collate([rows[j] for j in part] if n else [rows[weights.index(max(weights))]], pad_id)
            with self._sync(last=i == len(mine) - 1), self._autocast():
                loss = self.module(self._on_device(batch))
            scaled = loss * (n / total * self.world)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if n:
                loss_sum += loss.item() * n
                tokens += int(batch["attention_mask"].sum())
        summed = self._sum([loss_sum, tokens])
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], max_grad_norm
        )
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return summed[0] / total, int(summed[1])

    @torch.no_grad()
    def mean_loss(
        self, model: nn.Module, features: Sequence[Feature], batch_size: int, pad_id: int, loss_fn: LossFn
    ) -> float:
        """``loop.mean_loss`` with the length-sorted batches dealt out to the processes in turn; each runs as many
        forwards (one weighted 0 when the batches ran out), so that FSDP's gathers pair up."""
        model.eval()
        size = max(1, batch_size // self.world)
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        total, weight = 0.0, 0
        for turn in range(math.ceil(len(chunks) / self.world)):
            k = turn * self.world + self.rank
            rows = [features[i] for i in chunks[min(k, len(chunks) - 1)]]
            with self._autocast():
                loss = self.module(self._on_device(collate(rows, pad_id)))
            if k < len(chunks):
                n = sum(scored(r) for r in rows)
                total, weight = total + float(loss) * n, weight + n
        summed = self._sum([total, weight])
        return summed[0] / max(summed[1], 1)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.spec.strategy != "fsdp":
            return _trainable_state(model)  # every process holds the whole model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.module, options=StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
        )
        return {
            k.removeprefix(PREFIX): v.detach().clone() for k, v in full.items() if isinstance(v, torch.Tensor)
        }

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if self.spec.strategy != "fsdp":
            model.load_state_dict(state, strict=False)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(
            self.module,
            {PREFIX + k: v.to(self.device) for k, v in state.items()},
            options=StateDictOptions(full_state_dict=True, strict=False),
        )

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The whole optimizer state (gathered under FSDP) and every process's random generators."""
        if self.spec.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            state = get_optimizer_state_dict(
                self.module, optimizer, options=StateDictOptions(full_state_dict=True)
            )
        else:
            state = optimizer.state_dict()
        generators = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            generators["cuda"] = torch.cuda.get_rng_state(self.device)
        every: list[Any] = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(every, generators)
        else:
            every = [generators]
        return {"optimizer": state, "torch_rng": every, "world_size": self.world}

    def resume(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        if self.spec.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.module, optimizer, saved["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        else:
            optimizer.load_state_dict(saved["optimizer"])
        generators = saved["torch_rng"][self.rank]
        torch.set_rng_state(generators["cpu"])
        if "cuda" in generators and self.device.type == "cuda":
            torch.cuda.set_rng_state(generators["cuda"], self.device)

    # ------------------------------------------------------------------------------------------ helpers
    def _on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def _sync(self, last: bool) -> Iterator[None]:
        """Average gradients across processes only after the last micro-batch of a step."""
        if self.world == 1 or last or self.spec.strategy == "none":
            yield
        elif self.spec.strategy == "ddp":
            with self.module.no_sync():  # type: ignore[operator]
                yield
        else:  # fsdp
            self.module.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)  # type: ignore[operator]

    def _sum(self, values: list[float]) -> list[float]:
        """``values`` summed over every process."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def in_process_stepper(spec: DistributedSpec, model: nn.Module, loss_fn: LossFn) -> ShardedStepper | None:
    """The stepper of a one-process recipe that asks for accumulation, mixed precision or checkpointing; None (the
    loop's own ``OneProcess``) for the default block."""
    if spec.strategy != "none" or spec == DistributedSpec():
        return None
    return ShardedStepper(model, loss_fn, spec)
