"""Where the activations moved: the policy's residual stream against the reference's.

Notation: h^(l)_t ∈ R^H is the output of decoder layer l (the residual stream after the
layer) at token t, for l = 0..L−1; δ^(l)_t = h^(l)_t,π − h^(l)_t,ref on the same input.
Only tokens with attention_mask = 1 count (T^(l) = that set of tokens).

The layer outputs are caught with forward hooks on the decoder layers, not taken from
`output_hidden_states`: in transformers the last entry of `hidden_states` has the final norm
applied, so it would not be the same kind of vector as the others (nor what patching replaces).

residual_shift (per layer l)
    relative_shift   mean_t ‖δ_t‖ / ‖h_t,ref‖
    mean_shift       δ̄ = mean_t δ_t                          (vector, H)
    directions       top-k eigenvectors u_k of G = Σ_t δ_t δ_tᵀ (the right singular vectors of
                     the stacked shifts; uncentred, so a constant shift counts), each signed so
                     that u_k · δ̄ ≥ 0
    explained        λ_k / Σ_j λ_j = σ_k² / Σ_j σ_j², the share of Σ_t ‖δ_t‖² along u_k

shift_lens / logit_lens_of_shift (per layer l)
    Δlogits = W_U (γ ⊙ δ̄)   with W_U the policy's unembedding (V × H) and γ its final norm's
    scale. The RMS normalisation's per-token factor 1/rms(h_t) is ignored: it is a positive
    scalar per token, so it rescales Δlogits without reordering them. The layers after l may
    still transform δ̄ before the head sees it: this is a direct read-out of the shift vector,
    not the shift's full effect on the output.

activation_patching (per layer l)
    Run the REFERENCE with layer l's output replaced by the policy's (same inputs), and score
    the completion: logp = Σ over completion tokens of log p(token | prefix), summed over rows.
        fraction(l) = (logp_patched(l) − logp_ref) / (logp_π − logp_ref)
    Patching at l brings in everything the policy changed in the embeddings and layers ≤ l, so
    fraction(l) is cumulative: it is ~0 while the changes that matter lie above l, ~1 once all
    of them lie at or below l (provided the final norm and head did not change).

peft: a LoRA policy runs as is (its LoRA layers act inside the base model). `ref=None` or the
policy's own base model as `ref` means "the policy with its adapter disabled".
"""

from __future__ import annotations

import contextlib

import torch

from dpokit.data.collate import IGNORE_INDEX
from dpokit.logprobs import sequence_logps
from dpokit.models import is_peft_model
from dpokit.shift.weights import _unwrapped


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (`model.model.layers` for llama-like models)."""
    base = _unwrapped(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    for attr in ("layers", "h", "blocks"):
        layers = getattr(decoder, attr, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__}")


def final_norm_scale(model) -> torch.Tensor | None:
    """γ of the final norm (`model.model.norm.weight`), or None when it has no scale."""
    base = _unwrapped(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    for attr in ("norm", "final_layernorm", "ln_f"):
        norm = getattr(decoder, attr, None)
        if norm is not None:
            return getattr(norm, "weight", None)
    return None


def _hidden(output) -> torch.Tensor:
    # A decoder layer returns a tensor (transformers 5) or a tuple led by it (older versions).
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, new: torch.Tensor):
    """A decoder layer's output with its hidden states swapped for `new` (same form)."""
    new = new.to(_hidden(output).dtype)
    return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new


@contextlib.contextmanager
def _hooks(modules_and_hooks):
    handles = [m.register_forward_hook(h) for m, h in modules_and_hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _eval(*models):
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def reference_of(policy, ref):
    """(model to run as the reference, context to run it in). The context disables a peft
    policy's adapter when `ref` is None, the policy itself or the policy's base model."""
    if ref is None or ref is policy or (is_peft_model(policy) and ref is policy.get_base_model()):
        if not is_peft_model(policy):
            raise ValueError("ref=None needs a peft policy (the reference is its adapter disabled)")
        return policy, policy.disable_adapter
    return ref, contextlib.nullcontext


@contextlib.contextmanager
def catch_outputs(model, indices):
    """Context yielding a dict that fills with {layer index: that layer's output (N, S, H)}
    during the forward passes run inside it."""
    layers, caught = decoder_layers(model), {}

    def catcher(i):
        def hook(module, args, output):
            caught[i] = _hidden(output).detach()
        return hook

    with _hooks([(layers[i], catcher(i)) for i in indices]):
        yield caught


def layer_outputs(model, input_ids, attention_mask) -> list[torch.Tensor]:
    """Outputs of every decoder layer, [(N, S, H)] * L, from one pass of the decoder body."""
    n = len(decoder_layers(model))
    with catch_outputs(model, range(n)) as caught:
        _unwrapped(model).get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return [caught[i] for i in range(n)]


def _batches(n: int, batch_size: int | None):
    step = batch_size or max(n, 1)
    for start in range(0, n, step):
        yield slice(start, start + step)


def _principal(gram: torch.Tensor, mean: torch.Tensor, top_k: int):
    values, vectors = torch.linalg.eigh(gram)
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    total = float(values.sum())
    if total == 0.0:
        return None, None
    dirs = vectors[:, :top_k].T.clone()
    signs = torch.where(dirs @ mean < 0, -1.0, 1.0).to(dirs.dtype)
    return (values[:top_k] / total).tolist(), dirs * signs[:, None]


def residual_shift(
    policy, ref, input_ids, attention_mask, *, top_k: int = 3, batch_size: int | None = None
) -> list[dict]:
    """Per layer: relative_shift, mean_shift_norm ‖δ̄‖, tokens, explained (top-k fractions),
    directions (k × H tensor, or None when δ = 0) and mean_shift (H tensor); see the module
    docstring for the formulas. `batch_size` rows per forward pass (None: all at once)."""
    ref_model, ref_ctx = reference_of(policy, ref)
    acc: list[list] = []  # per layer: [Σ_t ‖δ‖/‖h_ref‖, Σ_t δ, Σ_t δδᵀ]
    tokens = 0
    with _eval(policy, ref_model):
        for rows in _batches(input_ids.shape[0], batch_size):
            ids, mask = input_ids[rows], attention_mask[rows]
            pi_out = layer_outputs(policy, ids, mask)
            with ref_ctx():
                ref_out = layer_outputs(ref_model, ids, mask)
            keep = mask.bool()
            tokens += int(keep.sum())
            for layer, (h_pi, h_ref) in enumerate(zip(pi_out, ref_out)):
                h_ref = h_ref[keep].to(torch.float64)
                delta = h_pi[keep].to(torch.float64) - h_ref
                rel = (delta.norm(dim=-1) / h_ref.norm(dim=-1).clamp(min=1e-30)).sum()
                parts = [rel, delta.sum(0), delta.T @ delta]
                if layer == len(acc):
                    acc.append(parts)
                else:
                    acc[layer] = [a + p for a, p in zip(acc[layer], parts)]
    out = []
    for layer, (rel, vec, gram) in enumerate(acc):
        mean = vec / max(tokens, 1)
        explained, dirs = _principal(gram, mean, top_k)
        out.append({
            "layer": layer,
            "tokens": tokens,
            "relative_shift": float(rel) / max(tokens, 1),
            "mean_shift_norm": float(mean.norm()),
            "explained": explained,
            "directions": dirs,
            "mean_shift": mean,
        })
    return out


def _token_entry(tokenizer, token_id: int, logit: float) -> dict:
    piece = tokenizer.convert_ids_to_tokens(token_id)
    return {"id": token_id, "token": tokenizer.decode([token_id]), "piece": piece, "logit": logit}


def shift_lens(model, vectors: list[torch.Tensor], tokenizer, *, top: int = 10) -> list[dict]:
    """For each vector δ: Δlogits = W_U (γ ⊙ δ) (see module docstring) and the `top` token ids
    it raises most (`promoted`) and lowers most (`demoted`), each {id, token (decoded), piece
    (the vocabulary entry), logit}; both empty for δ = 0. Only differences between tokens'
    Δlogits matter (softmax ignores a common offset), so "promoted" means "ranked highest"."""
    head = _unwrapped(model).get_output_embeddings().weight.detach().to(torch.float64)
    gamma = final_norm_scale(model)
    gamma = 1.0 if gamma is None else gamma.detach().to(torch.float64)
    out = []
    for layer, delta in enumerate(vectors):
        scaled = delta.to(head.device, torch.float64) * gamma
        logits = head @ scaled
        k = 0 if float(scaled.abs().max()) == 0.0 else min(top, logits.shape[0])  # no shift: none
        picks = {}
        for label, sign in (("promoted", 1.0), ("demoted", -1.0)):
            values, ids = torch.topk(sign * logits, k)
            picks[label] = [_token_entry(tokenizer, int(i), float(sign * v)) for v, i in zip(values, ids)]
        out.append({"layer": layer, **picks})
    return out


def logit_lens_of_shift(
    policy, ref, input_ids, attention_mask, tokenizer, *, top: int = 10, batch_size: int | None = None
) -> list[dict]:
    """`shift_lens` of each layer's mean shift δ̄ (from `residual_shift`), read through the
    policy's final-norm scale and unembedding."""
    rows = residual_shift(policy, ref, input_ids, attention_mask, top_k=1, batch_size=batch_size)
    return shift_lens(policy, [r["mean_shift"] for r in rows], tokenizer, top=top)


def _completion_logps(model, ids, mask, labels) -> torch.Tensor:
    return sequence_logps(model, ids, mask, labels).logps.double()


def _patched_logps(ref_model, ref_ctx, layer_module, replacement, ids, mask, labels) -> torch.Tensor:
    def patch(module, args, output):
        return _replace_hidden(output, replacement)

    with ref_ctx(), _hooks([(layer_module, patch)]):
        return _completion_logps(ref_model, ids, mask, labels)


def activation_patching(
    policy, ref, input_ids, attention_mask, completion_mask, layers=None, *, batch_size: int | None = None
) -> dict:
    """Patch the policy's layer-l output into the reference, for l in `layers` (default all).

    `completion_mask` (N, S) is 1 on the tokens whose log-probs are scored. Returns
    {policy_logp, ref_logp, gap, layers: [{layer, patched_logp, fraction}]} with the log-probs
    summed over completion tokens and rows, and fraction None when |gap| ≤ 1e-6·(1 + |ref_logp|)
    (no gap to move)."""
    ref_model, ref_ctx = reference_of(policy, ref)
    ref_layers = decoder_layers(ref_model)
    chosen = list(range(len(ref_layers))) if layers is None else [int(i) for i in layers]
    labels = torch.where(completion_mask.bool(), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    pi_total = ref_total = 0.0
    patched = {i: 0.0 for i in chosen}
    with _eval(policy, ref_model):
        for rows in _batches(input_ids.shape[0], batch_size):
            ids, mask, labs = input_ids[rows], attention_mask[rows], labels[rows]
            with catch_outputs(policy, chosen) as caught:
                pi_total += float(_completion_logps(policy, ids, mask, labs).sum())
            with ref_ctx():
                ref_total += float(_completion_logps(ref_model, ids, mask, labs).sum())
            for i in chosen:
                logps = _patched_logps(ref_model, ref_ctx, ref_layers[i], caught[i], ids, mask, labs)
                patched[i] += float(logps.sum())
    gap = pi_total - ref_total
    movable = abs(gap) > 1e-6 * (1.0 + abs(ref_total))
    return {
        "policy_logp": pi_total,
        "ref_logp": ref_total,
        "gap": gap,
        "layers": [
            {"layer": i, "patched_logp": patched[i],
             "fraction": (patched[i] - ref_total) / gap if movable else None}
            for i in chosen
        ],
    }
