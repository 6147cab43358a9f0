"""A registered adapter as an MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/acme_support_lora@production")``.

The registered folder carries an ``MLmodel`` file (``write_mlmodel``, at registration) whose ``python_function``
flavour names this module as its loader: MLflow downloads the version's files and calls ``_load_pyfunc(folder)``.
Nothing is pickled: the model is the adapter folder itself, and its base a reference (``adapter_config.json``'s hub
id or folder, resolved to the local copy by ``bases.resolve.resolve_reference``). ``predict`` applies the serving
contract (``serving.json``) as evaluation and ``adapter-registry serve`` do: the prompt rendered from each input,
greedy or constrained decoding, the answer budget; a classifier answers its label. It needs adapter-registry
installed (and the base available) wherever the model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MLMODEL = "MLmodel"
LOADER = "adapter_registry.pyfunc"


def write_mlmodel(folder: Path | str) -> Path:
    """Write the ``MLmodel`` file that makes ``folder`` (an adapter folder about to be registered) a pyfunc model."""
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    model = Model()
    add_to_model(model, loader_module=LOADER, data=".")
    path = Path(folder) / MLMODEL
    model.save(str(path))
    return path


class AdapterModel:
    """An adapter on its base, answering as its serving contract says."""

    def __init__(self, folder: Path) -> None:
        import json

        from adapter_registry.bases.resolve import resolve_reference
        from adapter_registry.contract import contract_of
        from adapter_registry.serving.loading import bitsandbytes_config
        from adapter_registry.training.models import load_adapter, load_tokenizer

        config = json.loads((folder / "adapter_config.json").read_text())
        task = "sequence_classification" if (folder / "head_config.json").is_file() else "causal_lm_sft"
        self.contract = contract_of(folder, task)
        self.base = resolve_reference(config["base_model_name_or_path"])
        quantization = (
            bitsandbytes_config(self.contract.base_quantization) if task == "causal_lm_sft" else None
        )
        self.model = load_adapter(self.base.path, folder, task, quantization)
        self.tokenizer = load_tokenizer(self.base.path)
        self.max_length = self.contract.max_prompt_tokens or 2048

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> list[str]:
        """Each input's answer. An input is the user's text (or a record of the contract's fields); give one, a
        list, or a DataFrame whose ``input`` column (else first column) holds them."""
        inputs = _inputs(model_input)
        if self.contract.task == "sequence_classification":
            return self._classify([str(x) for x in inputs])
        from adapter_registry.decoding import AnswerConstraint
        from adapter_registry.evaluation.evaluate import generate

        prompts = [self.contract.render(x, self.tokenizer) for x in inputs]
        constraint, budget = None, self.contract.max_new_tokens
        if self.contract.decoding == "constrained":
            constraint = AnswerConstraint.build(
                self.contract.answers, self.tokenizer, self.contract.answer_separator
            )
            budget = max(budget, constraint.longest)
        answers = generate(
            self.model, self.tokenizer, prompts, budget, self.max_length, constraint=constraint
        )
        return [a.strip() for a in answers]

    def _classify(self, texts: list[str]) -> list[str]:
        labels = self.labels
        return [labels[max(range(len(p)), key=p.__getitem__)] for p in self.probabilities(texts)]

    @property
    def labels(self) -> tuple[str, ...]:
        """A classifier's labels, in the order of its probabilities (the head's)."""
        return self.contract.labels or tuple(getattr(self.model, "labels", ()))

    def probabilities(self, texts: list[str]) -> list[list[float]]:
        """A classifier's probability of each label (``labels`` order) for each text: what a router decides by."""
        import torch

        from adapter_registry.training.features import classification_features, collate

        features = classification_features(texts, None, self.tokenizer, self.max_length)
        batch = collate(features, self.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return [[float(x) for x in row] for row in torch.softmax(logits.float(), dim=-1)]

    def unwrap_python_model(self) -> AdapterModel:
        return self


def _inputs(model_input: Any) -> Sequence[Any]:
    if isinstance(model_input, str | Mapping):
        return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:  # a DataFrame
        column = "input" if "input" in columns else columns[0]
        return list(model_input[column])
    return list(model_input)


def _load_pyfunc(path: str, model_config: Any = None) -> AdapterModel:
    """MLflow's entry point (the ``loader_module`` of the ``MLmodel`` file): ``path`` is the downloaded folder."""
    return AdapterModel(Path(path))
