"""Loading bases and adapters, saving adapters: the model side of training, evaluation, merge and round trips.

An adapter folder holds what ``peft`` saves (``adapter_config.json``, ``adapter_model.safetensors``) and, for
classification, the head (``head.safetensors``, ``head_config.json``; ``neighbours.safetensors`` when a neighbour
vote was chosen: the pooled features and labels of every labelled row), and its serving contract
(``serving.json``: prompt template, decoding, answer set, answer budget): enough to rebuild the exact model and ask
it what evaluation asked, with transformers + peft alone (see the model card written by ``evaluation.report``).
Its ``adapter_config.json`` names the base by its hub id (``base_model_name_or_path``; ``revision`` for a hub base),
not by this machine's cache folder, so the folder is portable (peft's ``AutoPeftModel``, vLLM, LoRAX).

An Arrow mixture (peft's ``create_arrow_model``) is saved as its experts' folders under ``experts/`` with
``arrow.json`` (their order and the routing settings) and the router's config at the top (``adapter_folder``), and
loaded back with ``create_arrow_model`` itself: plain peft, no code of ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from adapter_registry.adapter_folder import ARROW_FILE, arrow_experts, is_arrow, read_arrow
from adapter_registry.contract import ServingContract
from adapter_registry.training.heads import HEAD_CONFIG, PooledClassifier, Pooling


def load_tokenizer(base_path: Path | str) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(base_path: Path | str, task: str, quantization: Any = None) -> nn.Module:
    """A causal LM (optionally bitsandbytes-quantised) or a bare encoder for classification."""
    if task == "causal_lm_sft":
        model = AutoModelForCausalLM.from_pretrained(
            str(base_path), dtype=torch.float32, quantization_config=quantization
        )
        _keep_4bit_weights_trainable(model)
    else:
        model = AutoModel.from_pretrained(str(base_path), dtype=torch.float32)
    model.eval()
    return model


def _keep_4bit_weights_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference on the first eval-mode forward.

    On an AVX512-BF16 CPU, bitsandbytes 0.50 converts a ``Linear4bit`` weight to a CPU-only packed layout the
    first time it runs in eval mode without gradients, and never converts it back. A validation pass in the
    middle of QLoRA training then leaves every later step going through a kernel with no autograd (PyTorch
    warns "an autograd kernel was not registered ... silently incorrect"), and merging dequantises the packed
    data as if it were not packed. The standard layout serves training, evaluation and merging alike.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010 (a bitsandbytes attribute)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


ARROW_ROUTER = "arrow_router"  # the adapter name create_arrow_model gives the router (peft.tuners.lora.arrow)
EXPERTS_FOLDER = "experts"


def is_arrow_model(model: Any) -> bool:
    """A peft model built by ``create_arrow_model`` (its router adapter routes each token among the experts)."""
    return isinstance(model, PeftModel) and ARROW_ROUTER in model.peft_config


def save_adapter(
    model: Any,
    folder: Path | str,
    contract: ServingContract | None = None,
    base_name_or_path: str = "",
    base_revision: str = "",
    experts: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the adapter (and head) into ``folder``, with its serving ``contract`` (``serving.json``: how its
    evaluation rendered and decoded requests, so that serving does the same); returns the folder.

    ``base_name_or_path`` (``ResolvedBase.name_or_path``: the hub id) replaces the local folder peft would record as
    the base, with ``base_revision`` for a hub base. An Arrow mixture is saved in its own layout (``save_arrow``);
    ``experts`` then says what each of its experts is (recorded in ``arrow.json``, in routing order).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PooledClassifier):
        model.encoder.save_pretrained(str(folder))
        model.save_head(folder)
    elif is_arrow_model(model):
        save_arrow(model, folder, experts or [], base_name_or_path, base_revision)
    else:
        model.save_pretrained(str(folder))
    if base_name_or_path:
        name_base(folder, base_name_or_path, base_revision)
    if contract is not None:
        contract.write(folder)
    return folder


def name_base(folder: Path, name_or_path: str, revision: str = "") -> None:
    """Set the base a saved ``adapter_config.json`` names (``base_model_name_or_path``, and ``revision`` if given)."""
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = name_or_path
    if revision:
        config["revision"] = revision
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))  # as peft writes it


def save_arrow(
    model: PeftModel,
    folder: Path,
    experts: list[dict[str, Any]],
    base_name_or_path: str = "",
    base_revision: str = "",
) -> None:
    """An Arrow mixture as ``create_arrow_model`` takes it back: each expert's LoRA folder under ``experts/`` (peft's
    own save), the router's ``LoraConfig`` (with its ``arrow_config``) as the top ``adapter_config.json``, and
    ``arrow.json``: the experts in routing order (``experts[i]`` says which registered version each is) and the
    routing settings."""
    import peft

    router: Any = model.peft_config[ARROW_ROUTER]
    arrow = router.arrow_config
    names = list(arrow.task_adapter_names)
    if experts and len(experts) != len(names):
        raise ValueError(
            f"{len(experts)} expert descriptions for the {len(names)} experts of the Arrow model"
        )
    model.save_pretrained(str(folder / EXPERTS_FOLDER), selected_adapters=names)
    (folder / EXPERTS_FOLDER / "README.md").unlink(
        missing_ok=True
    )  # peft's empty card: the folder has its own
    router.save_pretrained(str(folder))
    if base_name_or_path:
        for name in names:
            name_base(folder / EXPERTS_FOLDER / name, base_name_or_path, base_revision)
    spec = {
        "experts": [
            {"adapter": name, "folder": f"{EXPERTS_FOLDER}/{name}",
             **{k: v for k, v in (experts[i] if experts else {}).items() if k != "expert"}}
            for i, name in enumerate(names)
        ],
        "top_k": arrow.top_k, "router_temperature": arrow.router_temperature, "rng_seed": arrow.rng_seed,
        "use_gks": bool(arrow.use_gks), "peft": peft.__version__,
        "load": "peft.create_arrow_model(base_model, [each expert's folder, in this order], "
        "peft.ArrowConfig(top_k=top_k, router_temperature=router_temperature, rng_seed=rng_seed))",
    }  # fmt: skip
    (folder / ARROW_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def load_arrow(base_model: nn.Module, folder: Path | str) -> PeftModel:
    """An Arrow mixture saved by ``save_arrow``, rebuilt by peft's ``create_arrow_model`` (the router's prototypes
    are computed from the experts' weights with the recorded seed: the same routing as when it was evaluated)."""
    from peft import ArrowConfig, create_arrow_model

    spec = read_arrow(folder)
    config = ArrowConfig(
        top_k=int(spec["top_k"]),
        router_temperature=float(spec["router_temperature"]),
        rng_seed=spec.get("rng_seed"),
    )
    base: Any = base_model  # a transformers PreTrainedModel
    model = create_arrow_model(base, [str(path) for _, path in arrow_experts(folder)], config)
    model.eval()
    return model


def load_adapter(base_path: Path | str, folder: Path | str, task: str, quantization: Any = None) -> nn.Module:
    """Rebuild an adapted model from its base and a saved adapter folder (an Arrow mixture too)."""
    folder = Path(folder)
    base = load_base_model(base_path, task, quantization)
    if is_arrow(folder):
        return load_arrow(base, folder)
    peft_model = PeftModel.from_pretrained(base, str(folder))
    peft_model.eval()
    if task != "sequence_classification":
        return peft_model
    head = json.loads((folder / HEAD_CONFIG).read_text())
    classifier = PooledClassifier(
        peft_model, len(head["labels"]), Pooling(head["pooling"], head["normalize"]), head["labels"]
    )
    classifier.load_head(folder)
    classifier.eval()
    return classifier


# logit transforms some causal LMs apply after the LM head; the answer-only loss below would skip them
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def answer_only_loss_fn(model: Any) -> Any:
    """A loss for ``loop.train`` that runs the LM head only where the labels are answer tokens, or None.

    Loss on the answer only means most positions (the prompt) are never scored, yet a causal LM's forward
    computes vocabulary logits at every position: for SmolLM2 (49,152 × 576 head) that is a fifth of a step's
    work, forward and backward. The loss is the same mean cross-entropy over answer tokens as the model's own.
    None where that shortcut would not be exact: prompt-learning adapters (virtual tokens) and models that
    transform their logits.
    """
    causal: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    if isinstance(model, PeftModel) and model.peft_config[model.active_adapter].is_prompt_learning:
        return None
    config = causal.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    backbone = getattr(causal, causal.base_model_prefix, None)
    head = causal.get_output_embeddings()
    if backbone is None or head is None:
        return None

    def loss(_: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        labels = batch["labels"][:, 1:]
        scored = labels != -100
        logits = head(hidden[:, :-1][scored])
        return nn.functional.cross_entropy(logits.float(), labels[scored])

    return loss
