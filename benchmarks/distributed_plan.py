"""Memory and throughput per device for LoRA and QLoRA under none / ddp / fsdp: a plan on paper, and a measurement on
one GPU where one is lent.

    .venv/bin/python benchmarks/distributed_plan.py            # the plan: seconds on a CPU, no weights, no GPU
    python3 benchmarks/distributed_plan.py --measure           # on a GPU machine: peak memory and tokens/s

The plan counts the parameters of a Llama 3.1 8B and 70B shape (``LlamaConfig``, built on the meta device: nothing
is allocated or downloaded) and the LoRA parameters peft adds to them (``get_peft_model`` on the meta model: rank 8,
alpha 16, q/v/o + gate/up/down, as torchtune's ``llama3_1/8B_lora_single_device`` recipe), then adds up, per device,
for a micro-batch of ``b`` rows of ``s`` tokens with activation checkpointing (the formulas are written into the
results, each next to its figure):

- base weights: parameters x bytes of their dtype (bf16: 2); QLoRA: the decoder's linear weights in NF4 with double
  quantisation, 0.5 + 1/64 + 4/(64 x 256) bytes each (4-bit codes, an 8-bit absmax per 64 weights, an fp32 absmax
  per 256 of those), everything else (embeddings, lm_head, norms) in bf16;
- adapter weights, gradients, AdamW state: 4 + 4 + 8 bytes per trainable parameter (peft keeps adapter weights in
  float32; AdamW two float32 moments); DDP adds its gradient buckets (one more float32 copy of the gradients);
- activations: per decoder layer and token, counting after Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", arXiv:2205.05198, section 4: what each op keeps for its backward, 2
  bytes a value) for a Llama block with SDPA/flash attention (no s x s score matrix kept): 2h (attention norm input)
  + 2h (q/k/v input) + 2h + 4 h_kv (q, k, v) + 2h (o_proj input) + 2h (MLP norm input) + 2h (gate/up input) + 8i
  (gate, up, silu(gate), their product); peft adds a float32 copy of each adapted module's input (4 x its in-features)
  and lora_A's output (4r). With checkpointing only each layer's input (2h) is kept, plus one layer recomputed in full
  during its backward. Logits for the loss: 6V per token (bf16 logits and their float32 copy; the project's
  answer-only loss computes them for the answer tokens only: ``--answer-share``);
- FSDP (N devices): base, adapter, gradients and optimizer state divided by N, plus what is gathered whole while it
  runs: two decoder layers (the one running and the one prefetched) and the root unit (embeddings, lm_head, final
  norm), which FSDP2 keeps gathered from the forward to the backward.

Throughput on paper: training FLOPs per token of a frozen base with an adapter = forward (2 x matmul parameters + 2
s h L for causal attention) x 2 (forward, and the backward's input gradients: the frozen weights need no weight
gradient) + 1 forward more with checkpointing; the bytes each device moves per step (DDP: a ring all-reduce of the
adapter gradients; FSDP: all-gathers of the base in the forward and again in the backward, a reduce-scatter of the
gradients). Tokens/s are what ``--measure`` finds; the plan gives a compute-bound bound at a stated utilisation.

Reference: torchtune's README (Llama 3.1 8B, batch 2, packed sequences of 2048, torch.compile, one RTX 4090): LoRA
16.2 GiB peak and 3083 tokens/s, QLoRA 7.4 GiB and 2413 tokens/s.

``--measure`` (a GPU machine, not run on a CPU): a random-init 8B-shaped Llama in bf16 on the GPU (no download),
LoRA (rank 8, as above) and QLoRA (its decoder linears replaced by bitsandbytes NF4 ``Linear4bit``; needs
bitsandbytes, which is skipped with a note where it is missing), activation checkpointing, AdamW, batch 2 x 2048
random tokens with the model's own loss, 2 warm-up steps then ``--steps`` timed ones: ``torch.cuda.max_memory_allocated``
and tokens/s, under ``--timeout`` seconds. Writes benchmarks/results/distributed_measure.{json,md}; the plan writes
benchmarks/results/distributed_plan.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"
GIB = 2**30
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # torchtune: q, v, output + MLP
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "llama-3.1-70b": {"vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False},
}  # fmt: skip
# a smoke test of --measure on a CPU (``--measure --device cpu --shape tiny``): the same code, no memory figures
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}  # fmt: skip
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 absmax per 256 absmaxes
REFERENCE = [
    {"source": "torchtune README", "model": "Llama 3.1 8B", "method": "lora", "device": "1x RTX 4090",
     "peak_gib": 16.2, "tokens_per_s": 3083},
    {"source": "torchtune README", "model": "Llama 3.1 8B", "method": "qlora", "device": "1x RTX 4090",
     "peak_gib": 7.4, "tokens_per_s": 2413},
]  # fmt: skip
H200_BF16_FLOPS = 790e12  # measured on the lent H200 (device/KINDS.md: an 8192^3 bf16 product)


# ------------------------------------------------------------------------------------------------ counting
@dataclass(frozen=True)
class Counts:
    """Parameter counts of one shape, from the model itself (meta device) and peft."""

    name: str
    total: int  # every parameter
    linear: int  # the decoder layers' linear weights (what QLoRA quantises)
    embeddings: int  # input embeddings + lm_head
    lookup: int  # the input embeddings alone (a lookup, no matmul)
    layer: int  # one decoder layer
    trainable: int  # LoRA parameters
    adapted_inputs: int  # sum of in-features over one layer's adapted modules
    adapted_modules: int  # adapted modules per layer
    hidden: int
    kv_hidden: int
    intermediate: int
    layers: int
    vocab: int


def count(name: str, rank: int) -> Counts:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[name])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    decoder = model.model.layers
    linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, nn.Linear))
    embeddings = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    layer = sum(p.numel() for p in decoder[0].parameters())
    adapted = [
        m for n, m in decoder[0].named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in TARGETS
    ]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    head = config.hidden_size // config.num_attention_heads
    return Counts(
        name, total, linear, embeddings, model.model.embed_tokens.weight.numel(), layer, trainable, sum(m.in_features for m in adapted), len(adapted),
        config.hidden_size, config.num_key_value_heads * head, config.intermediate_size, config.num_hidden_layers,
        config.vocab_size,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the plan
def activation_bytes_per_token(c: Counts, rank: int) -> dict[str, float]:
    """Bytes kept per token: one decoder layer in full, one layer's input, the logits (see the module docstring)."""
    h, kv, i = c.hidden, c.kv_hidden, c.intermediate
    base = 2 * h + 2 * h + 2 * h + 4 * kv + 2 * h + 2 * h + 2 * h + 8 * i
    lora = 4 * c.adapted_inputs + 4 * rank * c.adapted_modules
    return {
        "layer": base + lora,
        "layer_base": base,
        "layer_lora": lora,
        "layer_input": 2 * h,
        "logits": 6 * c.vocab,
    }


def plan_row(
    c: Counts,
    method: str,
    strategy: str,
    devices: int,
    micro_batch: int,
    seq: int,
    rank: int,
    checkpointing: bool,
    answer_share: float,
) -> dict[str, Any]:
    tokens = micro_batch * seq  # per device per micro-batch
    other = c.total - c.linear
    base = c.total * 2 if method == "lora" else c.linear * NF4_BYTES + other * 2
    adapter, grads, optim = 4 * c.trainable, 4 * c.trainable, 8 * c.trainable
    act = activation_bytes_per_token(c, rank)
    kept = act["layer_input"] * c.layers + act["layer"] if checkpointing else act["layer"] * c.layers
    activations = tokens * (kept + 2 * c.hidden + act["logits"] * answer_share)
    shard = devices if strategy == "fsdp" else 1
    row: dict[str, Any] = {
        "model": c.name, "method": method, "strategy": strategy, "devices": devices,
        "base_gib": base / shard / GIB, "adapter_gib": adapter / shard / GIB, "gradients_gib": grads / shard / GIB,
        "optimizer_gib": optim / shard / GIB, "activations_gib": activations / GIB,
    }  # fmt: skip
    extra = 0.0
    if strategy == "ddp":
        extra = grads  # the reducer's gradient buckets
    elif strategy == "fsdp":
        per_layer_linear = c.linear / c.layers
        layer_bytes = (
            c.layer * 2
            if method == "lora"
            else per_layer_linear * NF4_BYTES + (c.layer - per_layer_linear) * 2
        )
        extra = 2 * layer_bytes + (c.embeddings + c.hidden) * 2  # two layers gathered + the root unit
    row["transient_gib"] = extra / GIB
    row["total_gib"] = sum(row[k] for k in row if k.endswith("_gib"))
    forward = 2 * (c.total - c.lookup) + 2 * seq * c.hidden * c.layers  # the embedding lookup is no matmul
    row["flops_per_token"] = forward * (3 if checkpointing else 2)
    if strategy == "ddp":
        row["bytes_moved_per_step"] = 2 * (devices - 1) / devices * grads
    elif strategy == "fsdp":
        row["bytes_moved_per_step"] = (devices - 1) / devices * (2 * base + grads)
    else:
        row["bytes_moved_per_step"] = 0
    row["tokens_per_s_at_40pct_h200"] = 0.4 * H200_BF16_FLOPS / row["flops_per_token"]
    row["supported_here"] = not (strategy == "fsdp" and method == "qlora")
    return row


def plan(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    counts = {name: count(name, args.rank) for name in args.models}
    for c in counts.values():
        for method in ("lora", "qlora"):
            rows.append(
                plan_row(c, method, "none", 1, args.micro_batch, args.seq, args.rank, True, args.answer_share)
            )
            for strategy in ("ddp", "fsdp"):
                for n in args.devices:
                    rows.append(
                        plan_row(
                            c,
                            method,
                            strategy,
                            n,
                            args.micro_batch,
                            args.seq,
                            args.rank,
                            True,
                            args.answer_share,
                        )
                    )
        no_ckpt = plan_row(
            c, "lora", "none", 1, args.micro_batch, args.seq, args.rank, False, args.answer_share
        )
        rows.append({**no_ckpt, "strategy": "none (no checkpointing)"})
    return {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"paper plan, computed on {platform.machine()} ({os.cpu_count()} cores); nothing measured",
        "settings": {
            "micro_batch": args.micro_batch,
            "seq": args.seq,
            "lora_rank": args.rank,
            "lora_alpha": 2 * args.rank,
            "targets": TARGETS,
            "activation_checkpointing": True,
            "answer_share": args.answer_share,
            "base_dtype": "bf16",
            "adapter_dtype": "float32",
        },
        "counts": {name: c.__dict__ for name, c in counts.items()},
        "formulas": FORMULAS,
        "rows": rows,
        "reference": REFERENCE,
    }


FORMULAS = {
    "base_lora": "P_total x 2 bytes (bf16)",
    "base_qlora": f"P_decoder_linear x {NF4_BYTES:.5f} bytes (NF4, double quantisation) + P_rest x 2 bytes",
    "adapter_gradients_optimizer": "T x (4 + 4 + 8) bytes: float32 weights, float32 gradients, AdamW's two moments",
    "activations_per_token_layer": "2h + 2h + 2h + 4h_kv + 2h + 2h + 2h + 8i bytes (Korthikanti et al. 2022, "
    "section 4, counted for a Llama block with SDPA: no s x s term) + 4 x sum(in-features of adapted modules) + 4r x "
    "adapted modules (peft's float32 input copies, lora_A outputs)",
    "activations_checkpointed": "tokens x (L x 2h + one layer in full + 2h final norm + 6V x answer_share logits)",
    "ddp_extra": "one more float32 copy of the adapter gradients (DDP's buckets)",
    "fsdp": "(base + adapter + gradients + optimizer) / N + two decoder layers gathered + the root unit gathered "
    "(embeddings + lm_head + final norm, bf16)",
    "flops_per_token": "(2 x matmul params + 2 s h L) x 3 with checkpointing (forward, input-gradient backward, "
    "recomputed forward), x 2 without",
    "bytes_moved_per_step": "DDP 2(N-1)/N x adapter gradients; FSDP (N-1)/N x (2 x base + gradients)",
    "tokens_per_s_at_40pct_h200": "0.4 x 790 TFLOP/s (bf16, measured on the lent H200) / flops_per_token: a "
    "compute-bound bound at an assumed 40% utilisation, not a measurement",
}


def write_plan(result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed_plan.json").write_text(json.dumps(result, indent=1) + "\n")
    s = result["settings"]
    lines = [
        "# Distributed training plan: memory per device on paper", "",
        f"{result['generated']}; {result['machine']}. Written by `benchmarks/distributed_plan.py`.", "",
        f"Per device: micro-batch {s['micro_batch']} x {s['seq']} tokens, LoRA rank {s['lora_rank']} (alpha "
        f"{s['lora_alpha']}) on {', '.join(s['targets'])}, activation checkpointing, bf16 base, float32 adapter, "
        f"AdamW, logits for {s['answer_share']:.0%} of the tokens. GiB = 2^30 bytes.", "",
        "| model | method | strategy | devices | base | adapter+grads+AdamW | activations | transient | **total** "
        "| GFLOP/token | GB moved/step | tokens/s bound* |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["rows"]:
        note = "" if r["supported_here"] else " (refused here)"
        state = r["adapter_gib"] + r["gradients_gib"] + r["optimizer_gib"]
        lines.append(
            f"| {r['model']} | {r['method']} | {r['strategy']}{note} | {r['devices']} | {r['base_gib']:.2f} | "
            f"{state:.2f} | {r['activations_gib']:.2f} | {r['transient_gib']:.2f} | **{r['total_gib']:.1f}** | "
            f"{r['flops_per_token'] / 1e9:.1f} | {r['bytes_moved_per_step'] / 1e9:.2f} | "
            f"{r['tokens_per_s_at_40pct_h200']:.0f} |"
        )
    lines += ["", "\\* compute-bound bound per device at an assumed 40% of the H200's measured 790 TFLOP/s: not a "
              "measurement (`--measure` measures).", "", "## Reference: torchtune's published single-device figures",
              "", "| source | model | method | device | peak | tokens/s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for ref in result["reference"]:
        lines.append(
            f"| {ref['source']} | {ref['model']} | {ref['method']} | {ref['device']} | {ref['peak_gib']} GiB | "
            f"{ref['tokens_per_s']} |"
        )
    check = result["torchtune_check"]
    lines += [
        "",
        f"The plan's single-device 8B figures, {check['lora']['plan_gib']:.1f} GiB (LoRA) and "
        f"{check['qlora']['plan_gib']:.1f} GiB (QLoRA), count two things torchtune does not keep: the whole logits "
        f"for the loss ({check['logits_gib']:.2f} GiB; torchtune's loss is chunked) and peft's float32 copies of the "
        f"adapted modules' inputs ({check['fp32_copies_gib']:.2f} GiB; torchtune's adapters are bf16). Without them "
        f"the plan gives {check['lora']['comparable_gib']:.1f} and {check['qlora']['comparable_gib']:.1f} GiB against "
        "torchtune's measured 16.2 and 7.4 GiB. QLoRA with FSDP is refused here: the 4-bit weights would have to be "
        "stored as bf16 (bnb_4bit_quant_storage), which this project's quantisation does not set.",
        "",
        "## Formulas",
        "",
        *[f"- {k}: {v}" for k, v in result["formulas"].items()],
    ]
    (RESULTS / "distributed_plan.md").write_text("\n".join(lines) + "\n")


def torchtune_check(result: dict[str, Any], rank: int) -> dict[str, Any]:
    """The single-device 8B rows without what torchtune does not keep (whole logits, float32 adapter inputs)."""
    counts = result["counts"]["llama-3.1-8b"]
    s = result["settings"]
    tokens = s["micro_batch"] * s["seq"]
    logits = tokens * 6 * counts["vocab"] * s["answer_share"] / GIB
    copies = tokens * 4 * counts["adapted_inputs"] / GIB  # one layer's, kept while it is recomputed
    rows = {
        r["method"]: r for r in result["rows"] if r["model"] == "llama-3.1-8b" and r["strategy"] == "none"
    }
    return {
        "logits_gib": logits,
        "fp32_copies_gib": copies,
        **{m: {"plan_gib": rows[m]["total_gib"], "comparable_gib": rows[m]["total_gib"] - logits - copies,
               "torchtune_gib": ref["peak_gib"]} for m, ref in (("lora", REFERENCE[0]), ("qlora", REFERENCE[1]))},
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ --measure
def _quantise_linears(model: nn.Module) -> None:
    """Replace every decoder linear by a bitsandbytes NF4 Linear4bit holding the same (random) weights."""
    import bitsandbytes as bnb

    for module in list(model.model.layers.modules()):  # type: ignore[union-attr]
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                four = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                         compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                                         device="meta")  # fmt: skip
                four.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
                ).to(child.weight.device)
                setattr(module, name, four)
                del child


def measure_one(method: str, args: argparse.Namespace) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = TINY if args.shape == "tiny" else SHAPES[args.shape]
    config = LlamaConfig(**shape, attn_implementation="sdpa")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    began = time.perf_counter()
    with device:
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    if method == "qlora":
        _quantise_linears(model)
    if cuda:
        torch.cuda.empty_cache()
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules=TARGETS))  # fmt: skip
    built_s = time.perf_counter() - began
    four_bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    if method == "qlora" and not four_bit:
        raise RuntimeError("no Linear4bit module after quantising: peft would train a bf16 base")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=cuda)
    model.train()
    ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(2 + args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    tokens = args.micro_batch * args.seq
    row = {
        "method": method, "model": f"{args.shape} shape, random init, bf16", "micro_batch": args.micro_batch,
        "seq": args.seq, "lora_rank": args.rank, "trainable_params": sum(p.numel() for p in trainable),
        "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
        "s_per_step": sum(times) / len(times), "tokens_per_s": tokens * len(times) / sum(times),
        "build_s": built_s, "final_loss": loss.item(), "linear4bit_modules": four_bit,
    }  # fmt: skip
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--measure needs a CUDA GPU; the paper plan runs without one (drop --measure)")
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"over {args.timeout} s")))
    signal.alarm(args.timeout)
    rows = []
    for method in ("lora", "qlora"):
        try:
            if method == "qlora":
                import bitsandbytes  # noqa: F401
            rows.append(measure_one(method, args))
        except ImportError as exc:
            rows.append({"method": method, "skipped": f"bitsandbytes is not installed here ({exc})"})
        except (TimeoutError, RuntimeError) as exc:
            rows.append({"method": method, "error": f"{type(exc).__name__}: {exc}"[:500]})
    signal.alarm(0)
    import peft
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        machine = f"{props.name} ({props.total_memory / GIB:.0f} GiB), {versions}"
    else:
        machine = f"CPU smoke run ({platform.machine()}, {os.cpu_count()} cores), {versions}"
    return {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "shape": args.shape,
        "rows": rows,
        "reference": REFERENCE,
    }


def write_measure(result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed_measure.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# 8B-shaped LoRA and QLoRA on one GPU: measured", "",
        f"{result['generated']} on {result['machine']}. Written by `benchmarks/distributed_plan.py --measure`.", "",
        "| method | peak allocated | peak reserved | tokens/s | s/step | note |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["rows"]:
        if "tokens_per_s" in r:
            peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "-"
            reserved = f"{r['reserved_gib']:.1f} GiB" if r["reserved_gib"] is not None else "-"
            lines.append(
                f"| {r['method']} | {peak} | {reserved} | {r['tokens_per_s']:.0f} | "
                f"{r['s_per_step']:.2f} | batch {r['micro_batch']} x {r['seq']}, rank {r['lora_rank']} |"
            )
        else:
            lines.append(f"| {r['method']} | - | - | - | - | {r.get('skipped') or r.get('error')} |")
    lines += ["", "Reference (torchtune README, RTX 4090, torch.compile): LoRA 16.2 GiB, 3083 tokens/s; QLoRA 7.4 GiB, "
              "2413 tokens/s."]  # fmt: skip
    (RESULTS / "distributed_measure.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--devices", nargs="+", type=int, default=[2, 4, 8], help="N for ddp and fsdp rows")
    parser.add_argument(
        "--micro-batch", type=int, default=2, help="rows per device per micro-batch (torchtune: 2)"
    )
    parser.add_argument("--seq", type=int, default=2048, help="tokens per row (torchtune: 2048, packed)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (torchtune's 8B recipe: 8)")
    parser.add_argument("--answer-share", type=float, default=1.0,
                        help="share of tokens whose logits the loss computes (1: the model's own loss)")  # fmt: skip
    parser.add_argument("--measure", action="store_true", help="measure on this machine's GPU instead")
    parser.add_argument("--steps", type=int, default=5, help="--measure: timed steps after 2 warm-up steps")
    parser.add_argument("--timeout", type=int, default=480, help="--measure: seconds before it gives up")
    parser.add_argument(
        "--device", default="cuda", help="--measure: cuda (the measurement) or cpu (a smoke run)"
    )
    parser.add_argument(
        "--shape", default="llama-3.1-8b", choices=[*SHAPES, "tiny"], help="--measure: model shape"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    result = measure(args) if args.measure else plan(args)
    if not args.measure and "llama-3.1-8b" in args.models:
        result["torchtune_check"] = torchtune_check(result, args.rank)
    print(json.dumps(result["rows"], indent=1))
    if not args.no_write:
        (write_measure if args.measure else write_plan)(result)


if __name__ == "__main__":
    main()
