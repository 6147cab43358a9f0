"""Classification heads on pooled encoders, and the linear probe that initialises them (LP-FT).

The pooling follows how the base was pretrained: a sentence-embedding base (sentence-transformers files:
``modules.json`` + ``1_Pooling/config.json``) declares mean pooling and usually L2 normalisation; other encoders
use their pooler (or the CLS token). A head fitted by logistic regression on frozen pooled features is the
baseline the adapter must beat, and the adapter starts from it.

After training, a vote of the nearest labelled rows in the adapted feature space (cosine similarity) can be mixed
into the head's probabilities: ``NeighbourVote``, its k, temperature and weight chosen on the validation split by
log-loss (weight 0, the head alone, is one of the candidates). On Banking77 it lifted test accuracy by 0.9 to 1.6
points over the same models' heads alone (``benchmarks/results/quality.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head_config.json"
NEIGHBOURS = "neighbours.safetensors"


@dataclass(frozen=True)
class Pooling:
    mode: str  # mean | cls | pooler
    normalize: bool


def detect_pooling(base_path: Path | str, requested: str = "auto") -> Pooling:
    """The pooling a base was pretrained with, unless the recipe asks for one."""
    base_path = Path(base_path)
    normalize = False
    modules = base_path / "modules.json"
    declared = None
    if modules.is_file():
        entries = json.loads(modules.read_text())
        normalize = any(e.get("type", "").endswith("Normalize") for e in entries)
        for entry in entries:
            if entry.get("type", "").endswith("Pooling"):
                cfg = json.loads((base_path / entry["path"] / "config.json").read_text())
                declared = "mean" if cfg.get("pooling_mode_mean_tokens") else "cls"
    if requested != "auto":
        return Pooling(requested, normalize if requested == declared else False)
    return Pooling(declared or "pooler", normalize)


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooler_output: Any, pooling: Pooling
) -> torch.Tensor:
    """Pooled sentence features from an encoder's outputs."""
    if pooling.mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    elif pooling.mode == "cls":
        features = hidden[:, 0]
    else:
        if pooler_output is None:
            raise ValueError("this encoder has no pooler: use pooling: mean or cls")
        features = pooler_output
    return nn.functional.normalize(features, dim=-1) if pooling.normalize else features


@dataclass
class NeighbourVote:
    """The k most similar labelled rows vote with softmax(similarity / temperature); the vote is mixed into the
    head's probabilities with ``weight``: p = (1 - weight) * softmax(logits) + weight * vote."""

    keys: torch.Tensor  # (rows, hidden) L2-normalised pooled features of the labelled rows
    labels: torch.Tensor  # (rows,) their label indices
    k: int
    temperature: float
    weight: float

    def vote(self, features: torch.Tensor, num_labels: int) -> torch.Tensor:
        """(batch, num_labels) probabilities from the ``k`` nearest keys."""
        similarity = nn.functional.normalize(features, dim=-1) @ self.keys.T
        top, index = similarity.topk(min(self.k, len(self.keys)), dim=1)
        weights = torch.softmax(top / self.temperature, dim=1)
        votes = torch.zeros(len(features), num_labels, dtype=weights.dtype, device=weights.device)
        return votes.scatter_add_(1, self.labels[index], weights)

    def mix(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the mixture (what the classifier returns as its logits)."""
        probs = (1 - self.weight) * torch.softmax(logits, dim=-1) + self.weight * self.vote(
            features, logits.shape[-1]
        )
        return probs.clamp_min(1e-12).log()

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "temperature": self.temperature, "weight": self.weight, "rows": len(self.keys)}

    @classmethod
    def build(
        cls, features: np.ndarray, labels: np.ndarray, k: int, temperature: float, weight: float
    ) -> NeighbourVote:
        """A vote over labelled rows given as their pooled features (normalised here) and label indices."""
        keys = nn.functional.normalize(torch.from_numpy(features).float(), dim=-1)
        return cls(keys, torch.from_numpy(labels).long(), k, temperature, weight)

    def over(self, features: np.ndarray, labels: np.ndarray) -> NeighbourVote:
        """The same vote (k, temperature, weight) over other labelled rows."""
        return NeighbourVote.build(features, labels, self.k, self.temperature, self.weight)


def fit_neighbour_vote(
    keys: np.ndarray,
    key_labels: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    val_logits: np.ndarray,
    ks: tuple[int, ...] = (5, 10, 20, 50),
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.1),
    weights: tuple[float, ...] = (0.25, 0.5, 0.75),
) -> tuple[NeighbourVote | None, dict[str, float]]:
    """The vote (k, temperature, weight) with the lowest validation log-loss, or None when the head alone has it.

    ``keys`` are the training rows' pooled features, never the validation rows'. Returns the choice and every
    candidate's validation log-loss (``"head"`` for the head alone).
    """
    logits, features = torch.from_numpy(val_logits).float(), torch.from_numpy(val_x).float()
    y = torch.from_numpy(val_y).long()
    rows = torch.arange(len(y))
    voters = NeighbourVote.build(keys, key_labels, 1, 1.0, 0.0)  # k, temperature and weight set below

    def log_loss(log_probs: torch.Tensor) -> float:
        return float(-log_probs[rows, y].mean())

    scores = {"head": log_loss(torch.log_softmax(logits, dim=-1))}
    best: NeighbourVote | None = None
    best_loss = scores["head"]
    for k in ks:
        for temperature in temperatures:
            for weight in weights:
                vote = NeighbourVote(voters.keys, voters.labels, k, temperature, weight)
                loss = log_loss(vote.mix(logits, features))
                scores[f"k={k},temperature={temperature:g},weight={weight:g}"] = loss
                if loss < best_loss:
                    best, best_loss = vote, loss
    return best, scores


class PooledClassifier(nn.Module):
    """encoder (possibly peft-wrapped) → pooling → linear head. ``forward`` returns an object with .loss/.logits.

    With a ``neighbours`` vote, evaluation-mode logits are the log-probabilities of the head mixed with the vote
    (training always sees the head alone).
    """

    encoder: Any  # a transformers encoder, or the peft model wrapping it

    def __init__(self, encoder: Any, num_labels: int, pooling: Pooling, labels: list[str]):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.labels = list(labels)
        hidden = encoder.config.hidden_size
        self.head = nn.Linear(hidden, num_labels)
        self.neighbours: NeighbourVote | None = None

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None), self.pooling)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ClassifierOutput:
        features = self.features(input_ids, attention_mask)
        logits = self.head(features)
        if self.neighbours is not None and not self.training:
            logits = self.neighbours.mix(logits, features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(loss=loss, logits=logits)

    def head_config(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling.mode,
            "normalize": self.pooling.normalize,
            "labels": self.labels,
            "neighbours": self.neighbours.settings() if self.neighbours is not None else None,
        }

    def save_head(self, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(folder / HEAD_WEIGHTS))
        if self.neighbours is not None:
            save_file(
                {"keys": self.neighbours.keys.contiguous(), "labels": self.neighbours.labels.contiguous()},
                str(folder / NEIGHBOURS),
            )
        (folder / HEAD_CONFIG).write_text(json.dumps(self.head_config(), indent=2))

    def load_head(self, folder: Path) -> None:
        """The head's weights, and the neighbour vote when ``head_config.json`` records one."""
        from safetensors.torch import load_file

        self.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        settings = json.loads((folder / HEAD_CONFIG).read_text()).get("neighbours")
        self.neighbours = None
        if settings:
            memory = load_file(str(folder / NEIGHBOURS))
            self.neighbours = NeighbourVote(
                memory["keys"], memory["labels"], settings["k"], settings["temperature"], settings["weight"]
            )


@dataclass
class ClassifierOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


@dataclass
class LinearProbe:
    """Logistic regression on frozen features: the baseline, and the head's starting point."""

    weight: np.ndarray
    bias: np.ndarray
    C: float
    validation_accuracy: float
    candidates: dict[float, float] = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray((features @ self.weight.T + self.bias).argmax(1))


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_labels: int,
    cs: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0),
) -> LinearProbe:
    """Multinomial logistic regression; C chosen on the validation split only."""
    from sklearn.linear_model import LogisticRegression

    best: LinearProbe | None = None
    scores: dict[float, float] = {}
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(train_x, train_y)
        weight = np.zeros((num_labels, train_x.shape[1]), dtype=np.float32)
        bias = np.full(num_labels, -1e4, dtype=np.float32)  # a label never seen in train is never predicted
        classes = clf.classes_.astype(int)
        if len(classes) == 2 and num_labels >= 2:  # sklearn's binary form: one row for the positive class
            weight[classes[1]], bias[classes[1]] = clf.coef_[0] / 2, clf.intercept_[0] / 2
            weight[classes[0]], bias[classes[0]] = -clf.coef_[0] / 2, -clf.intercept_[0] / 2
        else:
            weight[classes], bias[classes] = clf.coef_, clf.intercept_
        probe = LinearProbe(weight, bias, c, 0.0)
        accuracy = float((probe.predict(val_x) == val_y).mean())
        scores[c] = accuracy
        if best is None or accuracy > best.validation_accuracy:
            best = LinearProbe(weight, bias, c, accuracy)
    assert best is not None
    best.candidates = scores
    return best


def refit_linear_probe(
    chosen: LinearProbe,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_labels: int,
) -> LinearProbe:
    """``chosen``'s C, fitted again on train + validation; its validation scores (what chose C) are kept."""
    probe = fit_linear_probe(
        np.concatenate([train_x, val_x]),
        np.concatenate([train_y, val_y]),
        val_x,
        val_y,
        num_labels,
        cs=(chosen.C,),
    )
    probe.validation_accuracy, probe.candidates = chosen.validation_accuracy, chosen.candidates
    return probe
