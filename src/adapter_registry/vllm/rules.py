"""What vLLM loads as a LoRA adapter: its rules as data, each with vLLM's own words, its source and the nearest fix.

vLLM checks an adapter when it loads it (``PEFTHelper._validate_features`` and ``validate_legal`` in
``vllm/lora/peft_helper.py``, https://github.com/vllm-project/vllm/blob/main/vllm/lora/peft_helper.py) and then
maps every saved LoRA weight onto a module of the served model (``vllm/lora/models.py``; a weight whose module the
architecture does not adapt is an error). Checking the same rules here, before promotion (``compat --engine
vllm``) and at export, turns a load failure on a GPU server into a refusal that names the reason and the fix.

Sources (read through the project's reference search, June 2026):
- LoRA in vLLM: https://docs.vllm.ai/en/latest/features/lora/ (``--enable-lora``, ``--lora-modules``,
  ``--max-lora-rank``, dynamic loading behind ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``);
- ``max_lora_rank``: ``vllm/config/lora.py`` (``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``,
  default 16), https://docs.vllm.ai/en/latest/api/vllm/config/lora/;
- peft types: vLLM's LoRA loader reads ``adapter_config.json`` as a LoRA config (``PEFTHelper.from_dict``), and
  its resolvers accept ``peft_type == "LORA"`` only (``vllm/plugins/lora_resolvers/filesystem_resolver.py``);
  prompt adapters were removed from vLLM (v0.10);
- modules per architecture: ``packed_modules_mapping`` and ``embedding_modules`` of the model class, e.g.
  ``LlamaForCausalLM`` in ``vllm/model_executor/models/llama.py``.

Ground floor of the vllm package: imports nothing of ours but ``adapter_folder`` (LoRA weight names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter_registry.adapter_folder import parse_lora_key

# vllm/config/lora.py: the values `--max-lora-rank` accepts, and its default.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16

# The module names (last component of a module path) vLLM applies LoRA to, per architecture: the members of
# `packed_modules_mapping` (qkv_proj = q/k/v, gate_up_proj = gate/up), the other linear layers, and
# `embedding_modules` (vllm/model_executor/models/llama.py; Mistral and Qwen2 use the same names). An
# architecture not listed here is not checked (vLLM decides when it loads).
_LLAMA_LIKE = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "embed_tokens",
    "lm_head",
)
LORA_MODULES: dict[str, tuple[str, ...]] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
}

# The task vLLM serves LoRA adapters for here: generation. A sequence_classification adapter of this project is an
# encoder LoRA plus this project's own head (head.safetensors) and neighbour vote, which vLLM does not load.
SERVED_TASK = "causal_lm_sft"

# peft's prompt-learning methods (virtual tokens): vLLM removed prompt adapters in v0.10.
PROMPT_LEARNING = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "CPT")

# init_lora_weights values that change the *base* weights when peft loads the adapter (PiSSA, OLoRA, CorDA,
# LoftQ): vLLM refuses them (PEFTHelper._init_is_supported).
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass(frozen=True)
class AdapterFacts:
    """What the rules look at: the saved ``adapter_config.json``, the version's task and base architecture, the
    saved weight names (None when the files are not at hand) and the server's ``--max-lora-rank`` (None: not
    checked, vLLM refuses at load time)."""

    config: Mapping[str, Any]
    task: str = SERVED_TASK
    architecture: str = ""
    weight_keys: tuple[str, ...] | None = None
    max_lora_rank: int | None = DEFAULT_MAX_LORA_RANK

    @property
    def max_rank(self) -> int:
        """The largest rank of any adapted module: ``r`` and every ``rank_pattern`` value (vLLM compares the
        largest with ``max_lora_rank``)."""
        ranks = [
            int(self.config.get("r") or 0),
            *(int(v) for v in (self.config.get("rank_pattern") or {}).values()),
        ]
        return max(ranks)


@dataclass(frozen=True)
class Problem:
    """Why vLLM cannot take an adapter, and the nearest fix."""

    detail: str
    fix: str


@dataclass(frozen=True)
class Rule:
    """One rule of vLLM's: its name, what vLLM says when it refuses, where that is written, and the check."""

    name: str
    vllm_says: str
    source: str
    check: Callable[[AdapterFacts], Problem | None] = field(repr=False)


@dataclass(frozen=True)
class Finding:
    """One rule applied to one adapter."""

    rule: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def needed_max_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank`` (the largest allowed one when none does)."""
    return next((r for r in MAX_LORA_RANKS if r >= rank), MAX_LORA_RANKS[-1])


# ------------------------------------------------------------------------------------------------ checks
def _task(f: AdapterFacts) -> Problem | None:
    if f.task in ("", SERVED_TASK):
        return None
    return Problem(
        f"task {f.task!r}: a classifier of this project is an encoder LoRA plus its own head (head.safetensors) "
        "and neighbour vote, which vLLM does not load",
        "serve classifiers with transformers + peft (the model card's loading snippet); vLLM serves causal_lm_sft "
        "adapters",
    )


def _peft_type(f: AdapterFacts) -> Problem | None:
    peft_type = str(f.config.get("peft_type", "")).upper()
    if peft_type == "LORA":
        return None
    if peft_type in PROMPT_LEARNING:
        return Problem(
            f"peft_type {peft_type}: a prompt-learning adapter (virtual tokens); vLLM removed prompt adapters",
            "retrain with `method: {type: lora}` in the recipe",
        )
    return Problem(
        f"peft_type {peft_type or '(none)'}: vLLM loads LoRA adapters only (peft_type LORA)",
        "retrain with `method: {type: lora}`, or merge it into the base (`merge.enabled: true`) and serve the "
        "merged model with vLLM as a model of its own",
    )


def _dora(f: AdapterFacts) -> Problem | None:
    if not f.config.get("use_dora"):
        return None
    return Problem(
        "use_dora=true: DoRA's magnitude vectors have no place in vLLM's LoRA kernels",
        "retrain with `use_dora: false`, or merge it into the base and serve the merged model",
    )


def _modules_to_save(f: AdapterFacts) -> Problem | None:
    saved = list(f.config.get("modules_to_save") or [])
    if not saved:
        return None
    return Problem(
        f"modules_to_save={saved}: whole modules trained beside the LoRA matrices, which vLLM does not load",
        "retrain without modules_to_save (LoRA matrices only), or merge it into the base and serve the merged model",
    )


def _bias(f: AdapterFacts) -> Problem | None:
    bias = f.config.get("bias", "none") or "none"
    if bias == "none" and not f.config.get("lora_bias"):
        return None
    what = f"bias={bias!r}" if bias != "none" else "lora_bias=true"
    return Problem(
        f"{what}: trained biases, which vLLM's LoRA layers do not add",
        "retrain with `bias: none` (and no lora_bias), or merge it into the base and serve the merged model",
    )


def _init(f: AdapterFacts) -> Problem | None:
    init = f.config.get("init_lora_weights", True)
    if not isinstance(init, str) or not init.lower().startswith(BASE_CHANGING_INITS):
        return None
    return Problem(
        f"init_lora_weights={init!r}: this initialisation changes the base weights when peft loads the adapter",
        "convert it to a plain LoRA with peft's path_initial_model_for_weight_conversion, or retrain with the "
        "default initialisation",
    )


def _unsupported_features(f: AdapterFacts) -> Problem | None:
    present = [
        name
        for name in ("layer_replication", "alora_invocation_tokens", "use_bdlora", "use_qalora")
        if f.config.get(name)
    ]
    if not present:
        return None
    return Problem(
        f"{', '.join(present)}: LoRA variants vLLM does not implement",
        "retrain as a plain LoRA, or merge it into the base and serve the merged model",
    )


def _rank(f: AdapterFacts) -> Problem | None:
    if f.max_lora_rank is None or f.max_rank <= f.max_lora_rank:
        return None
    needed = needed_max_lora_rank(f.max_rank)
    return Problem(
        f"rank {f.max_rank} is greater than --max-lora-rank {f.max_lora_rank}",
        f"start vLLM with --max-lora-rank {needed} (memory per LoRA slot grows with it), or retrain with "
        f"r <= {f.max_lora_rank}",
    )


def _targets(f: AdapterFacts) -> Problem | None:
    supported = LORA_MODULES.get(f.architecture)
    if supported is None:
        return None
    modules: set[str] = set()
    targets = f.config.get("target_modules")
    if isinstance(targets, list | tuple | set):
        modules |= {str(t).rsplit(".", 1)[-1] for t in targets}
    if f.weight_keys is not None:
        for key in f.weight_keys:
            parsed = parse_lora_key(key)
            if parsed is not None:
                modules.add(parsed.module.rsplit(".", 1)[-1])
    unsupported = sorted(modules - set(supported))
    if not unsupported:
        return None
    return Problem(
        f"target module(s) {unsupported}: vLLM's {f.architecture} adapts only {', '.join(supported)}",
        f"retrain with target_modules among {', '.join(supported)} (all-linear is fine)",
    )


def _weights(f: AdapterFacts) -> Problem | None:
    if f.weight_keys is None:
        return None
    other = sorted(k for k in f.weight_keys if parse_lora_key(k) is None)
    if not other:
        return None
    shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
    return Problem(
        f"the weight file holds {len(other)} tensor(s) that are not LoRA matrices ({shown})",
        "save the adapter with peft's save_pretrained and no extra modules (modules_to_save, DoRA magnitudes, "
        "trainable tokens)",
    )


_PEFT_HELPER = "vllm/lora/peft_helper.py (PEFTHelper)"
RULES: tuple[Rule, ...] = (
    Rule(
        "task",
        "(vLLM serves LoRA on generation models)",
        "https://docs.vllm.ai/en/latest/features/lora/",
        _task,
    ),
    Rule(
        "peft type",
        "peft_type must be LORA",
        "vllm/plugins/lora_resolvers/filesystem_resolver.py",
        _peft_type,
    ),
    Rule("DoRA", "vLLM does not yet support DoRA.", _PEFT_HELPER, _dora),
    Rule("modules_to_save", "vLLM only supports modules_to_save being None.", _PEFT_HELPER, _modules_to_save),
    Rule("bias", "Adapter bias is not supported.", _PEFT_HELPER, _bias),
    Rule("init_lora_weights", "vLLM does not support init_lora_weights=...", _PEFT_HELPER, _init),
    Rule(
        "LoRA variants",
        "vLLM does not support layer_replication / aLoRA / BD-LoRA / QALoRA.",
        _PEFT_HELPER,
        _unsupported_features,
    ),
    Rule("rank", "LoRA rank R is greater than max_lora_rank M.", _PEFT_HELPER + " validate_legal", _rank),
    Rule(
        "target modules",
        "(a weight of a module the model does not adapt fails the load)",
        "vllm/model_executor/models/llama.py (packed_modules_mapping, embedding_modules)",
        _targets,
    ),
    Rule(
        "weights",
        "(every tensor must be a LoRA matrix of an adapted module)",
        "vllm/lora/models.py",
        _weights,
    ),
)


def check(facts: AdapterFacts, rules: Iterable[Rule] = RULES) -> list[Finding]:
    """Every rule applied to ``facts``: one finding each, with the fix where it fails."""
    findings = []
    for rule in rules:
        problem = rule.check(facts)
        if problem is None:
            findings.append(Finding(rule.name, True, _passed(rule.name, facts)))
        else:
            findings.append(Finding(rule.name, False, problem.detail, problem.fix))
    return findings


def _passed(name: str, f: AdapterFacts) -> str:
    if name == "rank":
        if f.max_lora_rank is None:
            return f"rank {f.max_rank} (not checked: vLLM compares it with its --max-lora-rank when it loads)"
        return f"rank {f.max_rank} <= --max-lora-rank {f.max_lora_rank}"
    if name == "target modules" and f.architecture not in LORA_MODULES:
        return (
            f"not checked for {f.architecture or 'an unrecorded architecture'} (vLLM decides when it loads)"
        )
    if name == "weights" and f.weight_keys is None:
        return "not checked (no weight file at hand)"
    return "ok"


def refusal(findings: Iterable[Finding]) -> str:
    """One line naming every failed rule with its fix; "" when none failed."""
    return "; ".join(f"{f.rule}: {f.detail}. Fix: {f.fix}" for f in findings if not f.ok)
