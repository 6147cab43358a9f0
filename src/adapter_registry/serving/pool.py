"""Many LoRA adapters on one base model: load by name, switch in microseconds, mix adapters in one batch.

Every targeted ``nn.Linear`` of the base is wrapped once in a :class:`PooledLinear` that holds the A/B matrices
of every loaded adapter for that layer, keyed by an internal *slot* id. What a forward pass applies is decided
by one shared :class:`Route` (which slot each batch row uses), so switching adapters is one attribute write,
not peft's walk over every layer toggling ``requires_grad`` of every adapter (163 ms with 50 loaded).

Mixed batches do not loop over sub-batches the way peft's ``adapter_names`` path does (an index, a gather, two
small matmuls and a scatter per adapter, per layer, per decoding step). Each layer gathers every row's A and B
once per request into (batch, in, r) and (batch, r, out) stacks, and a step is two ``torch.bmm`` calls
whatever the mix: punica's / S-LoRA's gathered LoRA (BGMV), in plain torch. The gathered stacks are transient:
batch × adapter size while a mixed request runs.

Loading an adapter is two steps: :meth:`AdapterPool.prepare` reads and checks its files (no lock: serving goes
on), :meth:`AdapterPool.install` puts the prepared matrices in under the model lock. Replacing an adapter installs
it under a new slot, swaps the name → slot mapping, then drops the old slot: a request sees the old adapter or the
new one, never half of one. The name table is replaced whole on every change, so it is read without the model lock
(``adapters``, ``info``, ``in``): a health probe never waits for a generation.

A row of a batch may carry :class:`RowHooks`: told which version answers it before its first token, handed its
text as it is generated (streaming), and asked after every step whether anyone still waits for it (a row nobody
waits for stops generating).

Each adapter is served under its serving contract (``serving.json``, see ``contract``): a request's raw input is
rendered by the contract of the version that generates it, under the same lock, and its answer budget is the
contract's. An adapter whose recipe was evaluated with constrained decoding is decoded over the same answer set:
its rows of a batch may only start with one of its answers (and go on freely after the recipe's separator,
``category | reply``), other rows decode freely. A base loaded quantised (``quantization``) serves only adapters
evaluated on that quantisation, and a full-precision base only full-precision ones.

A prompt that, with the tokens it may generate, does not fit the base's context window (or the pool's
``max_prompt_tokens``) is refused with :class:`PromptTooLong` before anything runs: nothing is truncated silently.

Beside it: ``entities`` (what the pool takes and gives, its errors; exported here too), ``loading`` (an adapter
folder read and checked against the base and this server), ``row_hooks`` (a row's hooks during ``generate``),
``lora_layer`` (the pooled layer and its routes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adapter_registry.adapter_folder import is_arrow
from adapter_registry.contract import DEFAULT_MAX_NEW_TOKENS, ContractError, ServingContract
from adapter_registry.decoding import AnswerConstraint, allowed_tokens_per_row
from adapter_registry.serving.entities import (
    AdapterInfo,
    Generation,
    Input,
    NotForThisServer,
    PoolError,
    PreparedAdapter,
    PromptTooLong,
)
from adapter_registry.serving.loading import (
    answer_constraint,
    bitsandbytes_config,
    lora_weights,
    served_contract,
)
from adapter_registry.serving.lora_layer import PooledLinear, Route, Router
from adapter_registry.serving.row_hooks import Abandoned, RowHooks, RowStreamer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "AdapterInfo", "AdapterPool", "Generation", "Input", "NotForThisServer", "PoolError", "PreparedAdapter",
    "PromptTooLong", "RowHooks",
]  # fmt: skip

BASE = None  # a row that names no adapter runs the bare base model


# ------------------------------------------------------------------------------------------------ the pool
class AdapterPool:
    """One causal LM base and many LoRA adapters, served by name. Thread-safe: one lock around the model."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        fingerprint: str = "",
        max_prompt_tokens: int | None = None,
        quantization: str = "",
    ) -> None:
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens={max_prompt_tokens} must be at least 1 (or None: no limit)")
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.quantization = quantization  # "" (full precision) or the base's quantisation, e.g. "nf4-dq"
        self.max_prompt_tokens = max_prompt_tokens  # None: only the context window limits a prompt
        self.context_window: int | None = getattr(model.config, "max_position_embeddings", None)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self._router = Router()
        self._layers: dict[str, PooledLinear] = {}  # module name -> wrapped layer
        self._names: dict[str, AdapterInfo] = {}  # adapter name -> what serves it now
        self._constraints: dict[str, AnswerConstraint] = {}  # slot -> its closed answer set
        self._contracts: dict[str, ServingContract] = {}  # slot -> how its requests are rendered and decoded
        self._lock = threading.RLock()  # the model, its layers and routes
        self._tokenizer_lock = (
            threading.Lock()
        )  # a fast tokenizer is not safe to call from two threads at once
        self._counter = itertools.count(1)

    @classmethod
    def from_pretrained(
        cls,
        base_path: Path | str,
        fingerprint: str = "",
        dtype: torch.dtype = torch.float32,
        max_prompt_tokens: int | None = None,
        quantization: str = "",
    ) -> AdapterPool:
        """Load a base model folder (and its tokenizer) into an empty pool.

        ``quantization`` (e.g. ``nf4-dq``, see ``contract.QUANTIZATIONS``) loads the base through bitsandbytes as a
        QLoRA recipe trained and scored it, so that its adapters are served on the base they were evaluated on.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = bitsandbytes_config(quantization)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, quantization_config=config)
        for module in model.modules():  # as training and evaluation: the standard 4-bit layout (models.py)
            if hasattr(module, "support_avx512bf16_for_cpu"):
                setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        return cls(
            model, tokenizer, fingerprint=fingerprint, max_prompt_tokens=max_prompt_tokens,
            quantization=quantization,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------ adapters
    def add(self, name: str, folder: Path | str, metadata: dict[str, str] | None = None) -> AdapterInfo:
        """Load (or replace) adapter ``name`` from a peft LoRA folder; requests switch over atomically."""
        return self.install(self.prepare(name, folder, metadata))

    def prepare(
        self, name: str, folder: Path | str, metadata: dict[str, str] | None = None
    ) -> PreparedAdapter:
        """Read and check adapter ``name`` from a peft LoRA folder, without the model lock (serving goes on).
        Raises PoolError naming what does not fit."""
        folder = Path(folder)
        if is_arrow(folder):
            raise NotForThisServer(
                f"{folder}: an Arrow mixture routes every token among its experts (peft create_arrow_model); the pool "
                "applies one LoRA per request: load it with peft as its model card shows, or serve its experts "
                "behind a router (routes_to:)"
            )
        contract = served_contract(folder, self.quantization)
        weights = lora_weights(folder, self.model)
        with self._tokenizer_lock:
            constraint = answer_constraint(folder, contract, self.tokenizer)
        info = AdapterInfo(
            name=name, slot="", source=str(folder), layers=len(weights),
            ranks=tuple(sorted({a.shape[0] for a, _, _ in weights.values()})),
            nbytes=sum(a.nbytes + b.nbytes for a, b, _ in weights.values()),
            metadata=dict(metadata or {}), answers=constraint.size if constraint else 0, contract=contract,
        )  # fmt: skip
        return PreparedAdapter(info, weights, constraint)

    def install(self, prepared: PreparedAdapter, evict: str | None = None) -> AdapterInfo:
        """Serve a prepared adapter under its name (replacing the version serving it), after unloading ``evict``
        if given: one hold of the model lock, between two batches."""
        with self._lock:
            if evict is not None:
                self.remove(evict)
            slot = f"{prepared.info.name}#{next(self._counter)}"
            layers = {module: self._wrap(module) for module in prepared.weights}
            for module, triple in prepared.weights.items():
                layers[module].adapters[slot] = triple
            if prepared.constraint is not None:
                self._constraints[slot] = prepared.constraint
            assert prepared.info.contract is not None
            self._contracts[slot] = prepared.info.contract
            info = dataclasses.replace(prepared.info, slot=slot)
            old = self._names.get(info.name)
            self._names = {**self._names, info.name: info}  # replaced whole: readers take no lock
            if old is not None:
                self._drop_slot(old.slot)
        return info

    def remove(self, name: str) -> None:
        """Unload adapter ``name``."""
        with self._lock:
            info = self._names.get(name)
            if info is None:
                raise PoolError(f"adapter {name!r} is not loaded; loaded: {sorted(self._names)}")
            self._names = {n: i for n, i in self._names.items() if n != name}
            self._drop_slot(info.slot)

    def adapters(self) -> list[AdapterInfo]:
        """The adapters loaded now (read without the model lock)."""
        return sorted(self._names.values(), key=lambda a: a.name)

    def info(self, name: str) -> AdapterInfo | None:
        """What serves ``name`` now, or None (read without the model lock)."""
        return self._names.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)

    def contract(self, name: str) -> ServingContract:
        """The serving contract of the adapter that serves ``name`` now."""
        info = self._names.get(name)
        if info is None or info.contract is None:
            raise PoolError(f"adapter {name!r} is not loaded; loaded: {sorted(self._names)}")
        return info.contract

    def render(self, name: str, value: Any) -> tuple[str, AdapterInfo]:
        """The prompt for a request's ``input`` under the contract of the adapter serving ``name`` now, and that
        adapter (its version is the one whose contract rendered it). Raises ContractError for a bad input."""
        # no lock: the model lock is held for whole generations, and a request being checked must not wait for
        # one. One read of the name table: the contract and the version named go together.
        info = self._names.get(name)
        if info is None or info.contract is None:
            raise PoolError(f"adapter {name!r} is not loaded; loaded: {sorted(self._names)}")
        # a chat template is rendered as text (jinja), not tokenised: thread-safe
        return info.contract.render(value, self.tokenizer), info

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids to text, as an answer is decoded (special tokens skipped)."""
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _wrap(self, module: str) -> PooledLinear:
        layer = self._layers.get(module)
        if layer is None:
            parent_name, _, child = module.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            layer = PooledLinear(getattr(parent, child), self._router)
            setattr(parent, child, layer)
            self._layers[module] = layer
        return layer

    def _drop_slot(self, slot: str) -> None:
        for layer in self._layers.values():
            layer.adapters.pop(slot, None)
        self._constraints.pop(slot, None)
        self._contracts.pop(slot, None)

    # ------------------------------------------------------------------------------------ routing
    def route(self, adapters: Sequence[str | None]) -> Route | None:
        """The route for a batch whose row i uses ``adapters[i]`` (None: the base). Call under the lock."""
        slots: list[str] = []
        index: list[int] = []
        for name in adapters:
            if name is BASE:
                index.append(-1)
                continue
            info = self._names.get(name)
            if info is None:
                raise PoolError(f"adapter {name!r} is not loaded; loaded: {sorted(self._names)}")
            if info.slot not in slots:
                slots.append(info.slot)
            index.append(slots.index(info.slot))
        if not slots:
            return None
        if len(slots) == 1 and -1 not in index:
            return Route((slots[0],))
        return Route(tuple(slots), torch.tensor(index))

    def activate(self, adapter: str | None) -> None:
        """Switch every following forward pass to one adapter (None: the base) until the next switch."""
        with self._lock:
            self._set_route(self.route([adapter]))

    def _set_route(self, route: Route | None) -> None:
        if self._router.route is not None:
            for layer in self._layers.values():
                layer.drop_plan()
        self._router.route = route

    @contextlib.contextmanager
    def routed(self, adapters: Sequence[str | None]) -> Iterator[None]:
        """Hold the model with row i of the batch routed to ``adapters[i]``; restore the previous route."""
        with self._lock:
            previous = self._router.route
            self._set_route(self.route(adapters))
            try:
                yield
            finally:
                self._set_route(previous)

    # ------------------------------------------------------------------------------------ inference
    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, adapters: Sequence[str | None], **kwargs: Any) -> torch.Tensor:
        """Logits of one forward pass, row i through ``adapters[i]``."""
        with self.routed(adapters):
            return self.model(input_ids=input_ids, **kwargs).logits

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str | Input],
        adapters: Sequence[str | None],
        max_new_tokens: int | Sequence[int | None] | None = 32,
        hooks: Sequence[RowHooks | None] | None = None,
    ) -> list[Generation]:
        """Greedy completions of a mixed batch: prompt i through ``adapters[i]``.

        A prompt is a ``str`` sent as it is, or an :class:`Input` (a request's raw input) rendered by the serving
        contract of the adapter version that generates it, under the same lock: the version named in the result
        rendered, decoded and generated it. ``max_new_tokens`` is one budget for every row or one per row; None
        means the row's contract's (what evaluation used).

        Rows of an adapter with a closed answer set are constrained to spell one of its answers (given the
        tokens the longest answer needs, even beyond the budget), then, if it has a separator, go on freely after
        it; the other rows decode freely. Every row stops at its budget or its end of sequence. Raises
        :class:`PromptTooLong` (and generates nothing) if a prompt is over ``max_prompt_tokens`` or would, with its
        budget, overrun the base's context window, and ``ContractError`` if an input does not fit its contract.

        ``hooks[i]`` (optional) hears row i: the version answering it once the batch is checked, its text as it
        grows (the pieces add up to the row's final ``text``), and is asked after every step whether the row is
        abandoned (it then stops; the batch ends when every row has).
        """
        if len(prompts) != len(adapters):
            raise PoolError(f"{len(prompts)} prompts but {len(adapters)} adapter names: give one per prompt")
        if not prompts:
            return []
        budgets = (
            list(max_new_tokens) if isinstance(max_new_tokens, Sequence) else [max_new_tokens] * len(prompts)
        )
        rows = list(hooks) if hooks is not None else [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        with self.routed(adapters):
            served_by = [None if a is BASE else self._names[a] for a in adapters]
            contracts = [None if info is None else self._contracts.get(info.slot) for info in served_by]
            with self._tokenizer_lock:
                texts = [
                    p if isinstance(p, str) else self._render(p, contract)
                    for p, contract in zip(prompts, contracts, strict=True)
                ]
                # tokenised as in training and evaluation (the prompt template's text, no special tokens)
                encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            width = encoded["input_ids"].shape[1]
            constraints = [None if info is None else self._constraints.get(info.slot) for info in served_by]
            wanted = [
                budget
                if budget is not None
                else (c.max_new_tokens if c is not None else DEFAULT_MAX_NEW_TOKENS)
                for budget, c in zip(budgets, contracts, strict=True)
            ]
            limits = [n if c is None else max(n, c.longest) for n, c in zip(wanted, constraints, strict=True)]
            trained_limits = [  # a rendered input longer than training's max_length was never trained nor scored
                c.max_prompt_tokens if c is not None and isinstance(p, Input) else None
                for p, c in zip(prompts, contracts, strict=True)
            ]
            self._check_lengths([int(n) for n in encoded["attention_mask"].sum(1)], limits, trained_limits)
            constrain = None
            if any(c is not None for c in constraints):
                vocab = self.model.get_output_embeddings().weight.shape[0]
                constrain = allowed_tokens_per_row(constraints, width, vocab)
            for hook, info in zip(rows, served_by, strict=True):
                if hook is not None and hook.on_start is not None:
                    hook.on_start(info)
            streamer = (
                RowStreamer(self.decode, rows, limits, eos) if any(h and h.on_text for h in rows) else None
            )
            stop = Abandoned(rows) if any(h and h.abandoned for h in rows) else None
            from transformers.generation.stopping_criteria import StoppingCriteriaList

            output = self.model.generate(  # type: ignore[operator]
                **encoded, max_new_tokens=max(limits), do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos,
                prefix_allowed_tokens_fn=constrain, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([stop]) if stop is not None else None,
            )  # fmt: skip
        new = output[:, width:]
        results = []
        for i, (adapter, row) in enumerate(zip(adapters, new, strict=True)):
            row = row[: limits[i]]  # greedy: a free row's first tokens do not depend on a longer budget
            ends = (row == eos).nonzero()
            kept = row[: int(ends[0]) + 1] if len(ends) else row
            text = self.decode(kept.tolist())
            if streamer is not None:
                streamer.finish(i, text)
            results.append(
                Generation(
                    adapter=adapter,
                    text=text,
                    prompt_tokens=int(encoded["attention_mask"][i].sum()),
                    new_tokens=len(kept),
                    served_by=served_by[i],
                    constrained=constraints[i] is not None,
                    prompt=texts[i],
                    finish_reason="stop" if len(ends) else "length",
                )
            )
        return results

    def _render(self, prompt: Input, contract: ServingContract | None) -> str:
        if contract is None:
            raise ContractError("a request for the bare base model takes a 'prompt', not an 'input'")
        return contract.render(prompt.value, self.tokenizer)

    def _check_lengths(
        self, prompt_tokens: Sequence[int], limits: Sequence[int], trained: Sequence[int | None] = ()
    ) -> None:
        trained = list(trained) or [None] * len(prompt_tokens)
        for row, (tokens, budget, most) in enumerate(zip(prompt_tokens, limits, trained, strict=True)):
            where = f"prompt {row} of the batch" if len(prompt_tokens) > 1 else "the prompt"
            if most is not None and tokens > most:
                raise PromptTooLong(
                    f"{where} has {tokens} tokens; this adapter was trained and evaluated on examples of at most "
                    f"{most} (its recipe's max_length), so its answer here was never scored: shorten the input"
                )
            if self.max_prompt_tokens is not None and tokens > self.max_prompt_tokens:
                raise PromptTooLong(
                    f"{where} has {tokens} tokens; this server takes at most {self.max_prompt_tokens} "
                    "(max_prompt_tokens): shorten it"
                )
            if self.context_window is not None and tokens + budget > self.context_window:
                raise PromptTooLong(
                    f"{where} has {tokens} tokens and may generate {budget}: {tokens + budget} overrun the base's "
                    f"context window of {self.context_window} tokens; shorten it or ask for fewer new tokens"
                )

    # ------------------------------------------------------------------------------------ accounting
    def memory(self) -> dict[str, Any]:
        """Resident parameter bytes: the base (tied weights counted once) and each adapter."""
        seen: set[int] = set()
        base = 0
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                base += tensor.nbytes
        with self._lock:
            adapters = {a.name: a.nbytes for a in self._names.values()}
            held = sum(
                a.nbytes + b.nbytes for layer in self._layers.values() for a, b, _ in layer.adapters.values()
            )
        return {
            "base_bytes": base,
            "adapter_bytes": adapters,
            "adapters_total_bytes": held,
            "total_bytes": base + held,
        }
