"""The memory and time model of docs/scaling.md: bytes per parameter under each sharding
scheme, activation bytes per token, and the time of an epoch at a stated MFU. Pure arithmetic;
`python benchmarks/memory_model.py` prints the tables that docs/scaling.md shows.

Bytes per parameter (Rajbhandari et al. 2020, "ZeRO", section 3.1; mixed precision = bf16
weights and gradients, fp32 master weights and Adam moments):

    scheme            weights   gradients   optimizer state (master + m + v)
    fp32 (CPU)        4         4           8  (m, v; the weights are the master)
    bf16 mixed, DDP   2         2           12
    ZeRO-1            2         2           12 / N
    ZeRO-2            2         2 / N       12 / N
    ZeRO-3 / FSDP     2 / N     2 / N       12 / N
    ... + offload     2 / N     2 / N       0 on the GPU (12 / N in host memory)

LoRA: the frozen base weights (2 B/param in bf16, sharded / N under ZeRO-3 / FSDP) plus
16 B per trainable adapter parameter.

Activations per token and layer: Korthikanti et al. 2022 (eq. 2, attention scores never
stored: SDPA keeps O(s), not O(s²)) count 17 h-wide values for a GPT layer. A transformers
Llama layer keeps more (SwiGLU's three MLP tensors of width ~2.7h, RMSNorm's fp32 copies, the
rotated q and k): the slope of peak memory over trained tokens measured on the 135M model
(`measured_values_per_layer`) is ~29–35 h-wide values per layer (32 used), and that is what the model uses.
Full recomputation keeps each layer's input (h values) plus the one layer rebuilt during its
backward. The output head's logits add V·4 bytes per token in fp32 unless chunked (dpokit:
`chunk_size` tokens at a time).

Time: training costs ≈ 6·N FLOPs per token (forward 2N + backward 4N; Kaplan et al. 2020), and
DPO with a cached reference adds one reference forward (2N per token) once per pair.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9

# (weights, gradients, optimizer state) bytes per parameter; the second value says which of them
# are divided by the number of processes.
SCHEMES = {
    "fp32": ((4, 4, 8), (False, False, False)),
    "ddp": ((2, 2, 12), (False, False, False)),
    "zero1": ((2, 2, 12), (False, False, True)),
    "zero2": ((2, 2, 12), (False, True, True)),
    "zero3": ((2, 2, 12), (True, True, True)),  # = FSDP full shard
    "zero3-offload": ((2, 2, 0), (True, True, True)),  # optimizer state in host memory
}


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # all parameters
    hidden: int
    layers: int
    vocab: int


MODELS = {
    "135M": Model("SmolLM2-135M (measured here)", 134.5e6, 576, 30, 49152),
    "1B": Model("Llama-3.2-1B", 1.24e9, 2048, 16, 128256),
    "8B": Model("Llama-3.1-8B", 8.03e9, 4096, 32, 128256),
    "70B": Model("Llama-3.1-70B", 70.6e9, 8192, 80, 128256),
}


def state_bytes_per_param(scheme: str, n_procs: int) -> float:
    """Weights + gradients + optimizer state, bytes per parameter on one process."""
    sizes, sharded = SCHEMES[scheme]
    return sum(b / n_procs if s else b for b, s in zip(sizes, sharded))


def lora_state_bytes(params: float, trainable: float, n_procs: int, sharded: bool) -> float:
    """Frozen bf16 base (sharded or not) + 16 B per trainable parameter (bf16 weight and grad,
    fp32 master and moments), bytes on one process."""
    return params * 2 / (n_procs if sharded else 1) + trainable * 16


VALUES_PER_LAYER = 32  # h-wide values a transformers Llama layer keeps per token (measured_values_per_layer)


def activation_bytes_per_token(model: Model, *, recompute: bool, bytes_per_value: int = 2,
                               values_per_layer: float = VALUES_PER_LAYER) -> float:
    """Per token: `values_per_layer` values of width h per layer kept for backward, or with full
    recomputation each layer's input (h values) plus the one layer being rebuilt."""
    values = values_per_layer * model.layers if not recompute else model.layers + values_per_layer
    return values * model.hidden * bytes_per_value


def measured_values_per_layer(scaling_jsons: list[str], model: Model, bytes_per_value: int = 4) -> list[float]:
    """From the scaling benchmarks (peak RSS at growing batch / length, fp32): the slope of peak
    memory over trained tokens per step, as h-wide values per layer, one slope per sweep."""
    import json

    slopes = []
    for path in scaling_jsons:
        with open(path) as f:
            data = json.load(f)
        for sweep, per_step in (("batch_sweep", lambda q: q["x"] * q["tokens_per_pair"]),
                                ("length_sweep", lambda q: 2 * q["tokens_per_pair"])):  # the length sweep ran batch 2
            pts = data.get(sweep) or []
            if len(pts) >= 2:
                first, last = pts[0], pts[-1]
                per_token = (last["peak_rss_mb"] - first["peak_rss_mb"]) * 1e6 / (per_step(last) - per_step(first))
                slopes.append(per_token / (bytes_per_value * model.hidden * model.layers))
    return slopes


def logits_bytes(model: Model, tokens: int, *, chunk: int | None = None) -> float:
    """fp32 logits of the output head for `tokens` tokens, or for one chunk of `chunk`."""
    return model.vocab * 4 * (min(tokens, chunk) if chunk else tokens)


def epoch_hours(model: Model, *, pairs: int, tokens_per_pair: float, gpus: int, peak_flops: float, mfu: float,
                train_flops: int = 6) -> float:
    """Hours for one DPO epoch: `train_flops`·N per trained token (6 for a full fine-tune; 4 for
    LoRA, which skips the base weights' gradients), + 2N per token for the cached reference's
    one forward, at `mfu` of `peak_flops` per GPU."""
    flops = pairs * tokens_per_pair * model.params * (train_flops + 2)
    return flops / (gpus * peak_flops * mfu) / 3600


def max_pairs_per_microbatch(model: Model, states: float, gpu_gb: float, tokens_per_pair: int) -> int:
    """How many pairs fit beside the states in 90% of the GPU, recomputing activations and with
    the logits chunked (2048 tokens)."""
    free = 0.9 * gpu_gb * GB - states - logits_bytes(model, 2048)
    return max(0, int(free // (activation_bytes_per_token(model, recompute=True) * tokens_per_pair)))


def _table(gpu_gb: float, peak: float, mfu: float, pairs: int, tokens_per_pair: int) -> str:
    lines = [(f"GPU memory {gpu_gb:g} GB, peak {peak / 1e12:g} TFLOP/s bf16, MFU {mfu:.0%}; "
              f"{pairs} pairs × {tokens_per_pair} tokens (prompt once); activations recomputed, logits chunked"),
             "| model | GPUs | scheme | states GB/GPU | max pairs per micro-batch | epoch h |",
             "|---|---|---|---|---|---|"]
    for key in ("1B", "8B", "70B"):
        m = MODELS[key]
        rows = [(1, "ddp", m.params * state_bytes_per_param("ddp", 1), 6),
                (1, "LoRA, 0.5% trainable", lora_state_bytes(m.params, 0.005 * m.params, 1, sharded=False), 4)]
        rows += [(g, s, m.params * state_bytes_per_param(s, g), 6) for g in (8, 64) for s in ("ddp", "zero2", "zero3", "zero3-offload")]
        for gpus, scheme, states, train_flops in rows:
            fit = max_pairs_per_microbatch(m, states, gpu_gb, tokens_per_pair)
            hours = epoch_hours(m, pairs=pairs, tokens_per_pair=tokens_per_pair, gpus=gpus, peak_flops=peak, mfu=mfu,
                                train_flops=train_flops)
            lines.append(f"| {key} | {gpus} | {scheme} | {states / GB:.1f} | {fit if fit else 'does not fit'} | "
                         f"{hours:.2f} |")
    return "\n".join(lines)


def check_135m(results_path: str) -> str:
    """The model against the 135M run measured on this machine (fp32 on CPU, batch 4 pairs, no
    recomputation; benchmarks/results/throughput.json): predicted and measured peak memory."""
    import json

    with open(results_path) as f:
        measured = json.load(f)
    run = measured["configurations"]["dpokit-defaults"]
    m = MODELS["135M"]
    folder = results_path.rsplit("/", 1)[0]
    slopes = measured_values_per_layer([f"{folder}/scaling_batch.json", f"{folder}/scaling_length.json"], m)
    tokens = round(run["data"]["tokens_per_pair"] * run["batch"])
    states = m.params * state_bytes_per_param("fp32", 1)
    act = activation_bytes_per_token(m, recompute=False, bytes_per_value=4) * tokens
    logits = 2 * logits_bytes(m, tokens, chunk=2048)  # the logits and their gradient
    predicted = states + act + logits
    return (f"measured activation slope: {', '.join(f'{v:.0f}' for v in slopes)} h-wide values per layer per token "
            f"(the model uses {VALUES_PER_LAYER})\n"
            f"135M fp32, {tokens} tokens per step: states {states / GB:.2f} GB + activations {act / GB:.2f} GB + logits "
            f"{logits / GB:.2f} GB = {predicted / GB:.2f} GB predicted; measured peak RSS {run['peak_rss_mb'] / 1e3:.2f} GB "
            f"(predicted / measured = {predicted / (run['peak_rss_mb'] * 1e6):.2f}); measured {run['useful_gflops']:.0f} GFLOP/s = "
            f"{run['fraction_of_matmul_peak']:.0%} of this machine's fp32 matmul peak")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu-gb", type=float, default=80.0)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100 SXM: 989)")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--pairs", type=int, default=60_000)
    p.add_argument("--tokens-per-pair", type=int, default=768, help="prompt + chosen + rejected, prompt once")
    p.add_argument("--check", metavar="JSON", default="benchmarks/results/throughput.json",
                   help="the measured 135M run to check the model against")
    a = p.parse_args(argv)
    print(check_135m(a.check))
    print()
    print(_table(a.gpu_gb, a.peak_tflops * 1e12, a.mfu, a.pairs, a.tokens_per_pair))


if __name__ == "__main__":
    main()
