"""The evaluation report as JSON, its pictures, and the adapter's model card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from adapter_registry.evaluation.evaluate import EvaluationReport
from adapter_registry.recipes import Recipe
from adapter_registry.training.adapter import TrainedAdapter
from adapter_registry.training.loop import TrainResult


def report_dict(recipe: Recipe, trained: TrainedAdapter, report: EvaluationReport) -> dict[str, Any]:
    """Everything evaluation knows, JSON-ready: scores with intervals, baseline, training summary, warnings."""
    data = asdict(report)
    data.pop("predictions")  # one per test row: the confusion matrix and per-class F1 summarise them
    data.pop("outputs")  # one per test row too: saved beside the report as predictions.json
    data["flat_metrics"] = report.flat_metrics()
    data["gates"] = [
        {
            "gate": str(g),
            "value": report.metrics.get(g.metric),
            "passed": g.passes(report.metrics.get(g.metric, float("nan"))),
        }
        for g in recipe.evaluation.gates
    ]
    data["training"] = trained.result.summary()
    data["trainable_params"] = trained.trainable_params
    data["total_params"] = trained.total_params
    data["trainable_share"] = trained.trainable_share
    data["warnings"] = list(trained.warnings)
    if trained.result.overfitting:
        data["warnings"].append(
            "overfitting: validation loss rose while training loss fell (best step restored)"
        )
    if not report.beats_base:
        data["warnings"].append(
            f"does not beat its baseline on {report.task_metric} ({report.baseline}): "
            f"{report.metrics[report.task_metric]:.4f} vs {report.base_metrics[report.task_metric]:.4f}"
        )
    if trained.probe is not None:
        data["linear_probe"] = {
            "C": trained.probe.C,
            "validation_accuracy": trained.probe.validation_accuracy,
            "candidates": {str(k): v for k, v in trained.probe.candidates.items()},
        }
    if trained.neighbour_scores:
        vote = getattr(trained.model, "neighbours", None)
        data["neighbours"] = {
            "chosen": vote.settings() if vote is not None else None,  # None: the head alone scored best
            "validation_log_loss": trained.neighbour_scores,
        }
    return data


def dvc_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The figures `dvc metrics show` / `dvc metrics diff` list for one recipe (``dvc.yaml``: metrics): the test
    scores with their 95% intervals, the baseline's, whether it beats its baseline, and how training went."""
    training = report.get("training") or {}
    return {
        "test": dict(report["metrics"]),
        "baseline": dict(report["base_metrics"]),
        "beats_base": bool(report["beats_base"]),
        "trainable_share": round(float(report["trainable_share"]), 6),
        "training": {k: training[k] for k in ("steps", "best_step", "best_val_loss") if k in training},
    }


def learning_curve(result: TrainResult) -> list[dict[str, Any]]:
    """One record per step, ``{"step", "train_loss", "val_loss"}`` (``val_loss`` null where validation did not run:
    DVC wants the same keys in every record, and the plot skips the nulls): what `dvc plots show` draws
    (``dvc.yaml``: plots, x = step)."""
    validated, train = dict(result.val_loss), dict(result.train_loss)
    steps = sorted(set(train) | set(validated))
    return [{"step": s, "train_loss": train.get(s), "val_loss": validated.get(s)} for s in steps]


def figures(trained: TrainedAdapter, report: EvaluationReport) -> dict[str, Figure]:
    """learning_curves.png (train and validation loss per step) and, for classifiers, confusion_matrix.png."""
    result = trained.result
    curves = Figure(figsize=(6, 3.5))
    ax = curves.subplots()
    if result.train_loss:
        steps, losses = zip(*result.train_loss, strict=True)
        ax.plot(steps, losses, label="train loss", alpha=0.6)
    if result.val_loss:
        steps, losses = zip(*result.val_loss, strict=True)
        ax.plot(steps, losses, "o-", label="validation loss")
        ax.axvline(result.best_step, color="grey", linestyle=":", label=f"best step {result.best_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    curves.tight_layout()
    out = {"learning_curves.png": curves}
    if report.confusion:
        n = len(report.labels)
        cm = Figure(figsize=(max(4, n * 0.45), max(4, n * 0.45)))
        ax = cm.subplots()
        ax.imshow(report.confusion, cmap="Blues")
        ax.set_xticks(range(n), report.labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), report.labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"accuracy {report.metrics.get('accuracy', 0):.3f}")
        cm.tight_layout()
        out["confusion_matrix.png"] = cm
    return out


LOAD_CAUSAL = """```python
import json
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

contract = json.load(open("ADAPTER_DIR/serving.json"))  # how evaluation asked it: the same for you
quantized = contract["base_quantization"]  # "" or e.g. "nf4-dq": the base it was evaluated on (bitsandbytes)
bnb = None
if quantized == "int8":
    bnb = BitsAndBytesConfig(load_in_8bit=True)
elif quantized:
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantized.split("-")[0],
                             bnb_4bit_use_double_quant=quantized.endswith("-dq"), bnb_4bit_compute_dtype=torch.float32)
base = AutoModelForCausalLM.from_pretrained("BASE_PATH", quantization_config=bnb)
tokenizer = AutoTokenizer.from_pretrained("BASE_PATH")
model = PeftModel.from_pretrained(base, "ADAPTER_DIR").eval()
PROMPT_LINE
ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
budget, options = contract["max_new_tokens"], {}
if contract["decoding"] == "constrained":  # the answer before the separator is one of contract["answers"]
    eos, sep = tokenizer.eos_token_id, contract["answer_separator"].rstrip()
    spelled = [tokenizer(a, add_special_tokens=False).input_ids + [eos] for a in contract["answers"]]
    free = [tokenizer(a + sep, add_special_tokens=False).input_ids for a in contract["answers"]] if sep.strip() else []
    spelled += free
    def allowed(row, sequence):  # a token trie of the answers; free once an answer and its separator are written
        done = sequence[ids.shape[1]:].tolist()
        if any(done[: len(f)] == f for f in free):
            return list(range(model.config.vocab_size))
        return sorted({s[len(done)] for s in spelled if len(s) > len(done) and s[: len(done)] == done}) or [eos]
    budget, options = max(budget, max(len(s) for s in spelled)), {"prefix_allowed_tokens_fn": allowed}
out = model.generate(ids, max_new_tokens=budget, do_sample=False, **options)
print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
```"""
PROMPT_TEMPLATE_LINE = 'prompt = contract["prompt_template"].replace("{prompt}", "REQUEST")'
PROMPT_CHAT_LINE = (
    'system = [{"role": "system", "content": contract["system_message"]}] if contract["system_message"] else []\n'
    'prompt = tokenizer.apply_chat_template([*system, {"role": "user", "content": "REQUEST"}], tokenize=False, '
    "add_generation_prompt=True)"
)

LOAD_CLASSIFIER = """```python
import json, torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

encoder = PeftModel.from_pretrained(AutoModel.from_pretrained("BASE_PATH"), "ADAPTER_DIR").eval()
tokenizer = AutoTokenizer.from_pretrained("BASE_PATH")
head = load_file("ADAPTER_DIR/head.safetensors")
config = json.load(open("ADAPTER_DIR/head_config.json"))  # pooling, normalize, labels, neighbours
batch = tokenizer(["TEXT"], return_tensors="pt", padding=True)
with torch.no_grad():
    out = encoder(**batch)
    if config["pooling"] == "mean":
        mask = batch["attention_mask"].unsqueeze(-1).float()
        features = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    elif config["pooling"] == "cls":
        features = out.last_hidden_state[:, 0]
    else:  # pooler
        features = out.pooler_output
    if config["normalize"]:
        features = torch.nn.functional.normalize(features, dim=-1)
    logits = features @ head["weight"].T + head["bias"]
    if config.get("neighbours"):  # a vote of the nearest labelled rows, mixed into the head's probabilities
        vote, memory = config["neighbours"], load_file("ADAPTER_DIR/neighbours.safetensors")
        similarity = torch.nn.functional.normalize(features, dim=-1) @ memory["keys"].T
        top, index = similarity.topk(min(vote["k"], len(memory["keys"])), dim=1)
        weights = torch.softmax(top / vote["temperature"], dim=1)
        votes = torch.zeros_like(logits).scatter_add_(1, memory["labels"][index], weights)
        probs = (1 - vote["weight"]) * logits.softmax(-1) + vote["weight"] * votes
        logits = probs.clamp_min(1e-12).log()
print(config["labels"][int(logits.argmax())])
```"""


def _method_line(recipe: Recipe) -> str:
    if recipe.method is not None:
        return f"{recipe.method.type} ({recipe.method.family})"
    spec = recipe.compose
    assert spec is not None
    if spec.arrow:  # routed per token: no weights
        experts = ", ".join(f"`{p.version}`" for p in spec.parents)
        return f"Arrow mixture (top_k {spec.arrow_top_k}, router_temperature {spec.arrow_temperature:g}) of {experts}"
    parents = ", ".join(f"`{p.version}` x {p.weight:g}" for p in spec.parents)
    return f"composition ({spec.combination_type}) of {parents}"


TASK_TYPES = {"causal_lm_sft": "text-generation", "sequence_classification": "text-classification"}
MAX_DESCRIPTION = 5000  # MLflow keeps a model version's description up to 5000 characters


def card_metadata(
    recipe: Recipe, evaluation: dict[str, Any], base_hub_id: str = "", datasets: Sequence[str] = ()
) -> Any:
    """The card's YAML metadata (``huggingface_hub.ModelCardData``): base model, ``library_name: peft``, tags,
    datasets and the test scores, each with its 95% interval, as ``model-index`` eval results."""
    from huggingface_hub import EvalResult, ModelCardData

    task = TASK_TYPES.get(recipe.task.type, recipe.task.type)
    method = recipe.method.type if recipe.method is not None else "composition"
    dataset = datasets[0] if datasets else recipe.name
    results = []
    for name in recipe.evaluation.metrics:
        for suffix, label in (("", name), ("_ci_low", f"{name} (95% interval, low)"),
                              ("_ci_high", f"{name} (95% interval, high)")):  # fmt: skip
            value = evaluation["metrics"].get(name + suffix)
            if value is not None:
                results.append(
                    EvalResult(
                        task_type=task,
                        dataset_type=dataset,
                        dataset_name=dataset,
                        dataset_split="test",
                        metric_type=name + suffix,
                        metric_name=label,
                        metric_value=round(float(value), 6),
                    )
                )
    return ModelCardData(
        base_model=base_hub_id or None,
        library_name="peft",
        pipeline_tag=task,
        tags=["peft", method, "adapter-registry", *(f"{k}:{v}" for k, v in recipe.registration.tags.items())],
        datasets=list(datasets) or None,
        model_name=recipe.model_name,
        eval_results=results or None,
    )


def model_card(
    recipe: Recipe,
    evaluation: dict[str, Any],
    base_identity: str,
    base_fingerprint: str,
    *,
    base_hub_id: str = "",
    base_obtained: str = "",
    datasets: Sequence[str] = (),
) -> str:
    """README.md for the adapter folder (a Hugging Face model card: YAML metadata, then Markdown): what it is, how
    it scored, how the base was obtained, how to load it with transformers + peft alone."""
    from huggingface_hub import ModelCard

    metric = evaluation["task_metric"]
    rows = "\n".join(
        f"| {name} | {evaluation['metrics'][name]:.4f} [{evaluation['metrics'][name + '_ci_low']:.4f}, "
        f"{evaluation['metrics'][name + '_ci_high']:.4f}] | {evaluation['base_metrics'][name]:.4f} |"
        for name in recipe.evaluation.metrics
    )
    vote_line = ""
    if recipe.task.type == "sequence_classification":
        snippet = LOAD_CLASSIFIER
        vote = (evaluation.get("neighbours") or {}).get("chosen")
        if vote:
            vote_line = (
                f"- neighbour vote: the {vote['k']} nearest of {vote['rows']:,} labelled rows (temperature "
                f"{vote['temperature']:g}) carry {vote['weight']:.0%} of each prediction (chosen on validation)\n"
            )
    else:
        chat = recipe.data_spec.format == "chat"
        snippet = LOAD_CAUSAL.replace("PROMPT_LINE", PROMPT_CHAT_LINE if chat else PROMPT_TEMPLATE_LINE)
        snippet += (
            "\n\n`serving.json` is the adapter's serving contract: the prompt template, decoding (greedy, or "
            "constrained to the answers seen in training with the reply after the separator free), answer budget "
            "and answer set its evaluation used. `adapter-registry serve` applies it to a request's `input`, so "
            '`{"adapter": NAME, "input": "<the user\'s text>"}` gets the answer evaluation scored.'
        )
    warnings = "".join(f"- {w}\n" for w in evaluation.get("warnings", [])) or "- none\n"
    named = (
        f"`{base_hub_id}` (here: `{base_identity}`)"
        if base_hub_id and base_hub_id != base_identity
        else f"`{base_identity}`"
    )
    obtained = f"\n  obtained as {base_obtained}" if base_obtained else ""
    where = (
        f"`{base_hub_id}` where the Hugging Face Hub can be reached, or the base's local folder"
        if base_hub_id
        else "the base model's folder"
    )
    body = f"""# {recipe.model_name}

{recipe.description or "A PEFT adapter trained by adapter-registry."}

- base model: {named}, fingerprint `{base_fingerprint}`{obtained}
- task: {recipe.task.type}; method: {_method_line(recipe)},
  {evaluation["trainable_params"]:,} trainable parameters ({100 * evaluation["trainable_share"]:.2f}% of the model)
{vote_line}- baseline: {evaluation["baseline"]}
- beats its baseline on {metric} (95% interval above the baseline's score): {evaluation["beats_base"]}

| metric | adapter [95% interval] | baseline |
|---|---|---|
{rows}

Warnings:
{warnings}
## Load it with transformers + peft alone

`BASE_PATH` is {where}; `ADAPTER_DIR` this folder (`adapter-registry pull NAME@STAGE DIR`).

{snippet}
"""
    metadata = card_metadata(recipe, evaluation, base_hub_id, datasets)
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}"))


def card_description(card: str) -> str:
    """A model card as a registry description: its Markdown without the YAML metadata, without the loading snippet
    when that would pass MLflow's 5000 characters (the whole card stays in the version's files, README.md)."""
    from huggingface_hub import ModelCard

    text = ModelCard(card).text.strip()
    if len(text) <= MAX_DESCRIPTION:
        return text
    note = "\n\nHow to load it: README.md among the version's files (`adapter-registry pull`)."
    head = text.split("\n## Load it with transformers + peft alone", 1)[0].rstrip()
    room = MAX_DESCRIPTION - len(note)
    return (head if len(head) <= room else head[: room - 1] + "…") + note
