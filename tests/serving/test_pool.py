"""Contract tests of AdapterPool on a tiny random Llama: peft parity, switching, mixed batches, hot swaps."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch

from adapter_registry.contract import CONTRACT_FILE, LEGACY_ANSWERS_FILE, ServingContract
from adapter_registry.decoding import AnswerConstraint
from adapter_registry.serving.pool import AdapterPool, PoolError, PromptTooLong

from .conftest import build_adapter, build_base

PROMPTS = ["a b c 1 2", "d e f 3 4 5 6", "x y z", "a a a", "q r 7", "m n o p 8 9"]


@pytest.fixture
def pool(tiny_base: Path, adapters: dict[str, Path]) -> AdapterPool:
    loaded = AdapterPool.from_pretrained(tiny_base, fingerprint="sha256:tiny")
    for name, folder in adapters.items():
        loaded.add(name, folder)
    return loaded


@pytest.fixture
def batch(pool: AdapterPool) -> dict[str, torch.Tensor]:
    return dict(pool.tokenizer(PROMPTS, return_tensors="pt", padding=True))


def peft_logits(base: Path, adapter: Path | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference: the adapter loaded alone by peft (None: the bare base)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.inference_mode():
        return model.eval()(**batch).logits


def logits(pool: AdapterPool, batch: dict[str, torch.Tensor], adapters: list[str | None]) -> torch.Tensor:
    return pool.logits(batch["input_ids"], adapters, attention_mask=batch["attention_mask"])


@pytest.mark.parametrize("name", ["alpha", "qv", "rs", None])
def test_each_adapter_gives_pefts_logits(pool, batch, tiny_base, adapters, name):
    expected = peft_logits(tiny_base, adapters[name] if name else None, batch)
    got = logits(pool, batch, [name] * len(PROMPTS))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_switching_selects_the_named_adapter(pool, batch):
    pool.activate("alpha")
    with torch.inference_mode():
        first = pool.model(**batch).logits
    pool.activate("beta")
    with torch.inference_mode():
        beta = pool.model(**batch).logits
    pool.activate("alpha")
    with torch.inference_mode():
        again = pool.model(**batch).logits
    pool.activate(None)
    with torch.inference_mode():
        base = pool.model(**batch).logits
    assert (first - beta).abs().max() > 1e-2  # the adapters really differ
    assert (first - base).abs().max() > 1e-2
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    torch.testing.assert_close(base, logits(pool, batch, [None] * len(PROMPTS)), atol=0, rtol=0)


def test_mixed_batch_equals_one_batch_per_adapter(pool, batch):
    rows: list[str | None] = ["alpha", "beta", "qv", None, "rs", "alpha"]
    mixed = logits(pool, batch, rows)
    for i, name in enumerate(rows):
        alone = logits(pool, batch, [name] * len(rows))[i]
        torch.testing.assert_close(mixed[i], alone, atol=1e-4, rtol=0, msg=f"row {i} ({name})")


ANSWERS = ["a b c", "d e f 7"]  # 4 and 5 new tokens, the end included: more than the 2 a request asks for


@pytest.fixture
def closed(adapters: dict[str, Path], tmp_path: Path) -> Path:
    """Adapter alpha's weights with a closed answer set, as save_adapter writes it for constrained recipes."""
    folder = Path(shutil.copytree(adapters["alpha"], tmp_path / "closed"))
    closed_contract(ANSWERS).write(folder)
    return folder


def closed_contract(answers: list[str], separator: str = "") -> ServingContract:
    return ServingContract(
        task="causal_lm_sft", format="completion", answer_separator=separator, decoding="constrained",
        answers=tuple(answers),
    )  # fmt: skip


def test_an_adapter_with_an_answer_set_spells_only_its_answers_beside_free_rows(pool, closed):
    info = pool.add("closed", closed)
    assert info.answers == 2 and pool.adapters()[0].answers == 0  # alpha decodes freely
    names = ["closed", "alpha", "closed", None, "closed", "beta"]
    mixed = pool.generate(PROMPTS, names, max_new_tokens=2)  # a constrained row gets what its answer needs
    free = pool.generate(PROMPTS, ["alpha"] * 6, max_new_tokens=6)
    assert not {g.text for g in free} <= set(ANSWERS)  # a random adapter babbles when free ...
    for i, (g, name) in enumerate(zip(mixed, names, strict=True)):
        assert g.constrained == (name == "closed")
        if name == "closed":
            assert g.text in ANSWERS and g.new_tokens >= 4  # ... spells a whole answer when its set is closed
        else:  # free rows keep their own budget
            alone = pool.generate(PROMPTS, [name] * 6, max_new_tokens=2)[i]
            assert (g.text, g.new_tokens) == (alone.text, alone.new_tokens), (i, name)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("not json", "not JSON"),
        ('{"answers": []}', "must be a non-empty list"),
        ('{"answers": ["ok", 3]}', "must be a non-empty list of non-empty strings"),
    ],
)
def test_a_malformed_answer_set_is_refused_and_the_old_version_keeps_serving(pool, closed, content, error):
    """A folder registered before serving contracts carried its answer set alone, in answers.json."""
    (closed / CONTRACT_FILE).unlink()
    (closed / LEGACY_ANSWERS_FILE).write_text(content)
    before = pool.adapters()
    with pytest.raises(PoolError, match=error):
        pool.add("alpha", closed)
    assert pool.adapters() == before


def test_with_a_separator_the_answer_is_closed_and_the_reply_after_it_is_free(pool, closed):
    from adapter_registry.decoding import AnswerConstraint

    closed_contract(ANSWERS, separator=" 9 ").write(closed)  # "category 9 reply", as "category | reply"
    ids = {w: pool.tokenizer.convert_tokens_to_ids(w) for w in ("a", "b", "c", "9")}
    eos = pool.tokenizer.eos_token_id
    constraint = AnswerConstraint.build(ANSWERS, pool.tokenizer, " 9 ")
    assert constraint.allowed((ids["a"], ids["b"])) == [ids["c"]]
    assert set(constraint.allowed((ids["a"], ids["b"], ids["c"])) or []) == {eos, ids["9"]}  # end, or reply
    assert constraint.allowed((ids["a"], ids["b"], ids["c"], ids["9"])) is None  # free from here
    assert constraint.allowed((ids["a"], ids["b"], ids["c"], ids["9"], ids["a"], ids["a"])) is None

    pool.add("closed", closed)
    served = pool.generate(PROMPTS, ["closed"] * 6, max_new_tokens=12)
    assert all(g.text in ANSWERS or g.text.startswith(tuple(a + " 9" for a in ANSWERS)) for g in served)
    replies = [g.text for g in served if g.text not in ANSWERS]
    assert replies and any(len(r.split()) > 5 for r in replies)  # it went on past the separator


def test_the_pool_decodes_a_closed_adapter_as_evaluation_does(pool, closed, tiny_base):
    """Served = evaluated: the pool's mixed-batch path and evaluation's constrained generate give the same answers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapter_registry.evaluation.evaluate import generate

    pool.add("closed", closed)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), closed).eval()
    evaluated = generate(
        model, pool.tokenizer, PROMPTS, 5, 64, constraint=AnswerConstraint.build(ANSWERS, pool.tokenizer)
    )
    served = pool.generate(PROMPTS, ["closed", "alpha"] * 3, max_new_tokens=2)
    assert [g.text for g in served[::2]] == evaluated[::2]
    assert len(set(evaluated)) > 1  # the prompts do not all pick the same answer


def test_mixed_generation_equals_single_generation(pool):
    rows: list[str | None] = ["alpha", "beta", None, "rs"]
    mixed = pool.generate(PROMPTS[:4], rows, max_new_tokens=6)
    for i, name in enumerate(rows):
        alone = pool.generate([PROMPTS[i]], [name], max_new_tokens=6)[0]
        assert mixed[i].text == alone.text, (i, name)
    assert len({g.text for g in mixed}) > 1  # different adapters, different completions


def test_a_prompt_that_overruns_the_context_window_is_refused_before_anything_runs(pool):
    """The tiny base's window is 128 tokens: 120 prompt tokens leave room for 8 new ones, not 9."""
    long_prompt = " ".join(["a"] * 120)
    assert pool.generate([long_prompt], ["alpha"], max_new_tokens=8)[0].prompt_tokens == 120
    with pytest.raises(
        PromptTooLong, match="has 120 tokens and may generate 9: 129 overrun the base's context window of 128"
    ):
        pool.generate([long_prompt], ["alpha"], max_new_tokens=9)
    with pytest.raises(PromptTooLong, match="prompt 1 of the batch has 120 tokens"):
        pool.generate(["a b", long_prompt], ["alpha", "beta"], max_new_tokens=9)
    assert pool.generate(["a b"], ["alpha"], max_new_tokens=9)[0].new_tokens > 0  # the pool still serves


def test_a_closed_adapters_budget_counts_its_longest_answer(pool, closed):
    """A constrained row may need more tokens than asked for: the window check counts those."""
    pool.add("closed", closed)
    longest = AnswerConstraint.build(ANSWERS, pool.tokenizer).longest
    assert longest > 1
    fits = " ".join(["a"] * (128 - longest))
    pool.generate([fits], ["closed"], max_new_tokens=1)
    with pytest.raises(PromptTooLong, match=f"may generate {longest}:"):
        pool.generate([fits + " a"], ["closed"], max_new_tokens=1)


def test_max_prompt_tokens_caps_a_prompt_below_the_window(tiny_base, adapters):
    capped = AdapterPool.from_pretrained(tiny_base, max_prompt_tokens=5)
    capped.add("alpha", adapters["alpha"])
    assert capped.generate(["a b c d e"], ["alpha"], max_new_tokens=2)[0].prompt_tokens == 5
    with pytest.raises(
        PromptTooLong, match=r"has 6 tokens; this server takes at most 5 \(max_prompt_tokens\)"
    ):
        capped.generate(["a b c d e f"], ["alpha"], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_prompt_tokens=0 must be at least 1"):
        AdapterPool.from_pretrained(tiny_base, max_prompt_tokens=0)


def test_replacing_an_adapter_is_atomic_for_concurrent_requests(pool, batch, adapters):
    """While one thread serves "tenant", another replaces it back and forth between two adapters:
    every answer equals exactly one of the two, never a mix of a half-loaded adapter."""
    rows = ["tenant"] * len(PROMPTS)
    pool.add("tenant", adapters["alpha"])
    alpha = logits(pool, batch, rows)
    pool.add("tenant", adapters["beta"])
    beta = logits(pool, batch, rows)
    seen: list[str] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            while not stop.is_set():
                got = logits(pool, batch, rows)
                if torch.allclose(got, alpha, atol=1e-6):
                    seen.append("alpha")
                elif torch.allclose(got, beta, atol=1e-6):
                    seen.append("beta")
                else:
                    raise AssertionError("a request saw neither the old nor the new adapter")
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    for i in range(12):
        pool.add("tenant", adapters["alpha" if i % 2 else "beta"])
    stop.set()
    worker.join(timeout=30)
    assert not failures, failures
    assert seen
    slots = {info.slot for info in pool.adapters()}
    for layer in pool._layers.values():  # the replaced slots are gone from every layer
        assert set(layer.adapters) <= slots


def test_remove_frees_the_adapter(pool, batch, adapters):
    before = pool.memory()
    pool.remove("beta")
    after = pool.memory()
    assert "beta" not in pool and "beta" not in after["adapter_bytes"]
    assert after["adapters_total_bytes"] == before["adapters_total_bytes"] - before["adapter_bytes"]["beta"]
    with pytest.raises(PoolError, match="adapter 'beta' is not loaded"):
        logits(pool, batch, ["alpha", "beta", None, None, None, None])
    with pytest.raises(PoolError, match="adapter 'beta' is not loaded"):
        pool.remove("beta")


def test_memory_counts_base_once_and_each_adapter_exactly(pool, adapters):
    from safetensors.torch import load_file

    memory = pool.memory()
    assert memory["base_bytes"] == sum(
        p.nbytes for p in {p.data_ptr(): p for p in pool.model.parameters()}.values()
    ) + sum(b.nbytes for b in pool.model.buffers())
    for name, folder in adapters.items():
        on_disk = sum(t.nbytes for t in load_file(folder / "adapter_model.safetensors").values())
        assert memory["adapter_bytes"][name] == on_disk
    assert memory["total_bytes"] == memory["base_bytes"] + sum(memory["adapter_bytes"].values())


def test_refuses_dora(pool, tiny_base, tmp_path):
    folder = build_adapter(tiny_base, tmp_path / "dora", seed=5, use_dora=True)
    with pytest.raises(PoolError, match=r"use_dora=True is not served"):
        pool.add("dora", folder)
    assert "dora" not in pool


def test_refuses_an_adapter_of_another_base(pool, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "other")
    with pytest.raises(PoolError, match=r"do not fit a 32->32 layer: was it trained on another base"):
        pool.add("other", tmp_path / "other")


def test_refuses_other_peft_methods(pool, tiny_base, tmp_path):
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    config = IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    get_peft_model(model, config).save_pretrained(tmp_path / "ia3")
    with pytest.raises(PoolError, match="peft_type 'IA3' is not served; the pool serves LORA"):
        pool.add("ia3", tmp_path / "ia3")
    with pytest.raises(PoolError, match=r"has no adapter_config\.json"):
        pool.add("nothing", tmp_path)


def test_base_with_its_own_tokenizer_pads_left(tmp_path):
    pool = AdapterPool.from_pretrained(build_base(tmp_path / "base", seed=3))
    assert pool.tokenizer.padding_side == "left"
    assert pool.tokenizer.pad_token_id is not None
    with pytest.raises(PoolError, match="2 prompts but 1 adapter names"):
        pool.generate(["a", "b"], [None])


def test_the_contract_decides_the_base_precision_and_the_longest_input(pool, adapters, tmp_path):
    from adapter_registry.serving.pool import Input

    quantised = Path(shutil.copytree(adapters["alpha"], tmp_path / "q"))
    ServingContract(task="causal_lm_sft", format="completion", base_quantization="nf4-dq").write(quantised)
    with pytest.raises(PoolError, match=r"evaluated on the base in nf4-dq and this server runs it in full "
                                        r"precision: .*started with --quantization nf4-dq"):  # fmt: skip
        pool.add("q", quantised)
    short = Path(shutil.copytree(adapters["alpha"], tmp_path / "short"))
    ServingContract(task="causal_lm_sft", format="completion", max_prompt_tokens=4).write(short)
    pool.add("short", short)
    assert pool.generate([Input("a b c")], ["short"], max_new_tokens=2)[0].prompt == "a b c"
    with pytest.raises(PromptTooLong, match="trained and evaluated on examples of at most 4"):
        pool.generate([Input("a b c d e")], ["short"], max_new_tokens=2)
    assert (
        pool.generate(["a b c d e"], ["short"], max_new_tokens=2)[0].new_tokens == 2
    )  # an explicit prompt is sent as is
