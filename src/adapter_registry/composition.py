"""Registered LoRA adapters → one new adapter, with peft's ``add_weighted_adapter`` (the compose node's work).

Knows nothing of MLflow or Kedro: the node pulls each parent (sha256-verified) into a folder and hands over its
registered tags; :func:`parent_problems` refuses what peft cannot combine (another base, another task, a
method that is not plain LoRA, ranks that the combination type cannot mix), and :func:`compose_adapter` loads
the base and every parent, combines them into the adapter ``default`` and deletes the parents, so that the
result saves, evaluates, merges and registers like a trained adapter.

``combination_type: arrow`` keeps the parents as experts instead (peft's ``create_arrow_model``: each token routed
to the ``top_k`` experts nearest to it); the result is saved in the Arrow layout (``training.models.save_arrow``),
evaluates and registers like any adapter, and is never merged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from peft.tuners.lora import LoraLayer

from adapter_registry.adapter_folder import is_arrow, weights_digest
from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.contract import contract_of
from adapter_registry.recipes.compose import SAME_RANK, SIGNED, SVD, ComposeSpec
from adapter_registry.registry.entities import Tag
from adapter_registry.training.adapter import TrainedAdapter
from adapter_registry.training.loop import TrainResult, seed_everything
from adapter_registry.training.models import load_base_model, load_tokenizer

COMPOSED = "default"  # the composed adapter's name: peft saves "default" at the folder's top level


class CompositionError(ValueError):
    """Parents that cannot be composed; nothing is registered."""


@dataclass(frozen=True)
class Parent:
    """One parent as pulled from the registry."""

    asked: str  # as the recipe wrote it (NAME/VERSION or NAME@STAGE)
    ref: str  # the version it resolved to: NAME/VERSION
    weight: float | None  # None: an Arrow expert (routed, not weighted)
    folder: Path
    tags: Mapping[str, str]

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((self.folder / "adapter_config.json").read_text())
        return config

    def rank(self) -> int:
        config = self.config
        return max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])


def parent_problems(parents: Sequence[Parent], base: ResolvedBase, task: str, spec: ComposeSpec) -> list[str]:
    """Why these parents cannot be composed on ``base`` for ``task`` (one line each); empty when they can."""
    problems = []
    refs = [p.ref for p in parents]
    for ref in sorted({r for r in refs if refs.count(r) > 1}):
        asked = [p.asked for p in parents if p.ref == ref]
        problems.append(
            f"{' and '.join(asked)} are the same version {ref}; list it once with its total weight"
        )
    for p in parents:
        fingerprint = p.tags.get(Tag.BASE_FINGERPRINT, "")
        if fingerprint != base.fingerprint:
            problems.append(
                f"{p.ref} was trained on base {p.tags.get(Tag.BASE_ID, '?')!r} (fingerprint {fingerprint or '?'}), "
                f"not on this recipe's base {base.identity!r} (fingerprint {base.fingerprint}): "
                "LoRA updates only combine on the base they were trained on"
            )
        if p.tags.get(Tag.TASK) != task:
            problems.append(f"{p.ref} is a {p.tags.get(Tag.TASK, '?')} adapter, not {task}")
        config = p.config
        if config.get("peft_type") != "LORA":
            problems.append(
                f"{p.ref} is a {p.tags.get(Tag.METHOD) or config.get('peft_type')} adapter (peft type "
                f"{config.get('peft_type')}): composition (peft add_weighted_adapter) combines LoRA adapters only"
            )
        elif config.get("use_dora"):
            problems.append(
                f"{p.ref} uses DoRA: its magnitude vectors are not combined by add_weighted_adapter; "
                "compose plain LoRA adapters"
            )
        if config.get("modules_to_save"):
            problems.append(
                f"{p.ref} trains whole modules ({config['modules_to_save']}), which cannot be combined"
            )
        if is_arrow(p.folder):
            problems.append(f"{p.ref} is itself an Arrow mixture: compose its experts, not the mixture")
        if spec.arrow and (quantized := contract_of(p.folder).base_quantization):
            problems.append(
                f"{p.ref} was trained and evaluated on the base quantised ({quantized}); an Arrow mixture runs its "
                f"experts on this recipe's full-precision base {base.identity!r}: mix adapters of that base"
            )
    if problems:
        return problems
    kind = spec.combination_type
    ranks = {p.ref: p.rank() for p in parents}
    if kind in SAME_RANK and (
        len(set(ranks.values())) > 1 or any(p.config.get("rank_pattern") for p in parents)
    ):
        problems.append(
            f"combination_type {kind} needs parents of one rank without rank_pattern, got ranks {ranks}; "
            "use cat (ranks add up) or svd / an *_svd variant (re-factorised to svd_rank)"
        )
    if spec.arrow:
        targets = {p.ref: _targets(p) for p in parents}
        if len(set(targets.values())) > 1:
            problems.append(
                f"arrow routes among experts that adapt the same modules, got {targets}; train them with one "
                "target_modules"
            )
        return problems
    kinds = {p.ref: "list" if isinstance(p.config.get("target_modules"), list) else "regex" for p in parents}
    if len(set(kinds.values())) > 1:
        problems.append(
            f"parents give target_modules as a list and as a regex {kinds}; peft cannot combine the two"
        )
    return problems


def _targets(parent: Parent) -> str:
    """The modules a parent adapts, as a comparable text (a list sorted; a regex as it is)."""
    targets = parent.config.get("target_modules")
    return ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)


def compose_adapter(
    parents: Sequence[Parent], base: ResolvedBase, task: str, spec: ComposeSpec
) -> TrainedAdapter:
    """Load ``base`` and every parent, combine them with ``spec`` into one adapter, drop the parents (an Arrow
    mixture keeps them, as experts)."""
    problems = parent_problems(parents, base, task, spec)
    if problems:
        raise CompositionError("cannot compose these parents:\n" + "\n".join(f"- {p}" for p in problems))
    if task != "causal_lm_sft":
        raise CompositionError(f"composition of {task} adapters is not supported (heads cannot be averaged)")
    if spec.arrow:
        return compose_arrow(parents, base, task, spec)
    names = [f"parent_{i}" for i in range(len(parents))]
    model = PeftModel.from_pretrained(
        load_base_model(base.path, task), str(parents[0].folder), adapter_name=names[0]
    )
    for name, parent in zip(names[1:], parents[1:], strict=True):
        model.load_adapter(str(parent.folder), adapter_name=name)
    seed_everything(spec.seed)  # DARE prunes at random
    options: dict[str, Any] = {"density": spec.density}
    if spec.combination_type in SIGNED:
        options["majority_sign_method"] = spec.majority_sign_method or "total"
    if spec.combination_type in SVD:
        options.update(svd_rank=spec.svd_rank, svd_clamp=spec.svd_clamp)
    model.add_weighted_adapter(
        names, spec.weights, COMPOSED, combination_type=spec.combination_type, **options
    )
    model.set_adapter(COMPOSED)
    for name in names:
        model.delete_adapter(name)
    # peft folds each parent's scaling into the combined factors and gives the result lora_alpha = r; with
    # rsLoRA parents the copied use_rslora flag would rescale it by sqrt(r): the result's scaling is 1
    config: Any = model.peft_config[COMPOSED]
    config.use_rslora = False
    for module in model.modules():
        if isinstance(module, LoraLayer) and COMPOSED in module.scaling:
            module.scaling[COMPOSED] = 1.0
    model.eval()
    adapter_params = sum(p.numel() for n, p in model.named_parameters() if f".{COMPOSED}." in n)
    total = sum(p.numel() for p in model.parameters())
    return TrainedAdapter(
        model,
        load_tokenizer(base.path),
        task,
        base,
        TrainResult(steps=0),
        adapter_params,
        total,
        parents=[{"version": p.ref, "weight": p.weight} for p in parents],
    )


def compose_arrow(
    parents: Sequence[Parent], base: ResolvedBase, task: str, spec: ComposeSpec
) -> TrainedAdapter:
    """peft's Arrow over the parents (checked by :func:`parent_problems`): ``create_arrow_model`` loads each as an
    expert ``task_<i>`` and adds the router; every token is routed to its ``top_k`` nearest experts. The prototypes
    are computed with ``spec.seed``, so the saved mixture (``arrow.json`` records the seed) routes as evaluated."""
    from peft import ArrowConfig, create_arrow_model

    config = ArrowConfig(
        top_k=spec.arrow_top_k, router_temperature=spec.arrow_temperature, rng_seed=spec.seed
    )
    base_model: Any = load_base_model(base.path, task)  # a transformers PreTrainedModel
    model = create_arrow_model(base_model, [str(p.folder) for p in parents], config)
    model.eval()
    experts = sum(p.numel() for n, p in model.named_parameters() if ".task_" in n)
    total = sum(p.numel() for n, p in model.named_parameters() if ".arrow_router." not in n)
    return TrainedAdapter(
        model,
        load_tokenizer(base.path),
        task,
        base,
        TrainResult(steps=0),
        experts,
        total,
        parents=[
            {
                "version": p.ref,
                "expert": f"task_{i}",
                "digest": weights_digest(
                    {k[len("ar.sha256.") :]: v for k, v in p.tags.items() if k.startswith("ar.sha256.")}
                ),
            }
            for i, p in enumerate(parents)
        ],
    )
