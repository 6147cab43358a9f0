"""A registered adapter loads with MLflow's own API, `mlflow.pyfunc.load_model("models:/NAME@STAGE")`, and answers
what evaluation answers (the serving contract applied)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.decoding import AnswerConstraint
from adapter_registry.evaluation.evaluate import generate
from adapter_registry.pipelines.datasets import AdapterFolderDataset
from adapter_registry.pyfunc import MLMODEL, write_mlmodel
from adapter_registry.recipes import parse_recipe
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.training.adapter import train_adapter
from helpers import classifier_recipe, sft_recipe, splits


@pytest.fixture
def registry(tmp_path: Path) -> AdapterStore:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield AdapterStore(uri)
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def _register(store: AdapterStore, raw: dict, base: Path, tmp_path: Path) -> tuple:
    recipe = parse_recipe(raw)
    train_examples, val_examples, test_examples = splits(raw)
    trained = train_adapter(recipe, describe_folder(base), train_examples, val_examples)
    folder = tmp_path / "adapter"
    AdapterFolderDataset(str(folder)).save(trained)
    assert write_mlmodel(folder) == folder / MLMODEL
    tags = {Tag.TASK: recipe.task.type, Tag.BASE_FINGERPRINT: trained.base.fingerprint}
    store.register_adapter(recipe.name, folder, tags, {"loss": 1.0})
    return trained, test_examples


def test_a_generator_loads_from_its_alias_and_answers_as_evaluation(
    registry: AdapterStore, tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    raw = sft_recipe(tiny_llama, sft_data)
    raw["evaluation"]["decoding"] = "constrained"
    trained, _ = _register(registry, raw, tiny_llama, tmp_path)
    model = mlflow.pyfunc.load_model(
        "models:/tiny_sft@candidate"
    )  # MLflow's own API, the alias the pipeline sets
    requests = ["my parcel never came", "please refund order 123"]
    constraint = AnswerConstraint.build(trained.labels, trained.tokenizer, " | ")
    prompts = [trained.contract.render(r) for r in requests]
    budget = max(trained.contract.max_new_tokens, constraint.longest)
    expected = generate(trained.model, trained.tokenizer, prompts, budget, 64, constraint=constraint)
    assert model.predict(requests) == [e.strip() for e in expected]
    assert model.predict("my parcel never came") == [expected[0].strip()]


def test_a_classifier_loads_and_answers_its_labels(
    registry: AdapterStore, tiny_bert: Path, intent_data: Path, tmp_path: Path
) -> None:
    import pandas as pd
    import torch

    from adapter_registry.training.features import classification_features, collate

    trained, test_examples = _register(
        registry, classifier_recipe(tiny_bert, intent_data), tiny_bert, tmp_path
    )
    texts = [e.text for e in test_examples[:4]]
    batch = collate(
        classification_features(texts, None, trained.tokenizer, 32), trained.tokenizer.pad_token_id
    )
    with torch.no_grad():
        logits = trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = [trained.labels[int(i)] for i in logits.argmax(-1)]
    model = mlflow.pyfunc.load_model("models:/tiny_cls@candidate")
    assert model.predict(pd.DataFrame({"input": texts})) == expected
