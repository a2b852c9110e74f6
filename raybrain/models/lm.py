"""Causal language models for brain-guided reasoning (Hugging Face ``transformers``, ``peft``).

Everything heavy (torch, transformers, tokenizers, peft) is imported inside the functions,
so importing :mod:`raybrain.models` stays cheap.

Models
    :func:`load_lm` reads a local checkpoint directory (``config.json`` + weights +
    tokenizer files; any size, ``device_map`` to spread it over GPUs); :func:`tiny_lm`
    builds a small random Llama with a word-level tokenizer trained on the problems'
    vocabulary (tests, quick specs; nothing is downloaded); :func:`save_lm` writes either
    so that :func:`load_lm` reads it back.

Layers
    Layer ``0`` is the output of the input-embedding module (for models with learned
    absolute positions, such as GPT-2, before the position embeddings are added) and
    layer ``l`` in ``1..n_layers`` the output of decoder block ``l`` (1-based), read by a
    forward hook on the block. This is
    ``output_hidden_states[l]`` of ``transformers`` except at ``l = n_layers``, where
    ``transformers`` reports the state after the final norm and we report the block's
    own output (the state a steering hook on that block changes).

Problems
    :func:`encode_problems` tokenises every (problem, option) pair as
    ``[BOS] prompt option`` (the option after one space; BOS only where the tokenizer adds
    one). :func:`forward_problems` runs them and returns, differentiably, each option's
    summed token log-probability given the prompt and the pooled state of chosen layers
    over the problem's prompt tokens: ``pool="mean"`` averages the prompt's tokens (BOS
    excluded), ``pool="last"`` takes the last prompt token (the one that predicts the
    answer). Prompt states do not depend on the option (causal attention), so they are
    read from the first option's sequence.

Scoring
    The predicted option is the argmax of the summed log-probabilities
    (:func:`score_problems`, :func:`accuracy`).

Steering at inference
    :func:`steer` (a context manager) and :func:`add_steering_hook` register a forward
    hook on layer ``l`` that replaces every position's state ``h`` (shape (hidden,)) by
    ``h + alpha * B^T B (h - c)``: ``B`` (rank, hidden) has orthonormal rows spanning the
    joint directions, so ``B^T B`` is the orthogonal projector onto them, and ``c`` is an
    optional centre (default 0: the projection of the state itself). The component of
    ``h`` orthogonal to the subspace is untouched; the component inside it is scaled by
    ``1 + alpha`` (about ``c``). Every position of every sequence is steered, prompt and
    answer tokens alike.

Steering in fine-tuning
    :func:`add_adapters` wraps the model's linear layers with LoRA or DoRA adapters
    (``peft``; base weights frozen). :func:`finetune_loss` is
    ``L = CE_options + alpha * L_dir``: ``CE_options`` is the cross-entropy of the correct
    option under the softmax of the options' summed log-probabilities, and ``L_dir`` is
    :func:`raybrain.align.steering.direction_alignment_loss` of the pooled layer-``l``
    states against the brain's coordinates on the joint directions. ``alpha = 0`` (or no
    directions) is the language-only fine-tuning of the same budget: same adapters, same
    batches, same steps.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raybrain.errors import SpecError

__all__ = [
    "POOLS",
    "EncodedProblems",
    "SteeringHook",
    "accuracy",
    "add_adapters",
    "add_steering_hook",
    "decoder_blocks",
    "encode_problems",
    "finetune_epoch",
    "finetune_loss",
    "forward_problems",
    "hidden_states",
    "load_lm",
    "n_layers",
    "option_cross_entropy",
    "save_lm",
    "score_problems",
    "steer",
    "tiny_lm",
    "word_tokenizer",
]

#: How a problem's states are pooled over its prompt tokens.
POOLS = ("mean", "last")

_SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


# ---------------------------------------------------------------------------------- models


def word_tokenizer(texts, extra_words=()):
    """A word-level tokenizer for a closed vocabulary, built locally.

    Words are split on whitespace; the vocabulary is ``[PAD] [UNK] [BOS] [EOS]`` then
    every distinct word of ``texts`` and ``extra_words`` in sorted order. Encoding adds
    ``[BOS]`` in front (``add_special_tokens=True``); unknown words map to ``[UNK]``.

    Parameters
    ----------
    texts : iterable of str
        E.g. all prompts and all options of the problems.
    extra_words : iterable of str

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Saved with ``save_pretrained`` and read back with ``AutoTokenizer.from_pretrained``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = set(extra_words)
    for t in texts:
        words.update(str(t).split())
    words -= set(_SPECIALS)
    vocab = {w: i for i, w in enumerate(list(_SPECIALS) + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A $B", special_tokens=[("[BOS]", vocab["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]",
                                   unk_token="[UNK]", pad_token="[PAD]")


def tiny_lm(tokenizer, n_layers: int = 2, hidden: int = 64, heads: int = 4,
            intermediate: int | None = None, max_length: int = 128, seed: int = 0,
            arch: str = "llama"):
    """A small random-initialised causal LM for tests and quick specs.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Fixes the vocabulary size and the special token ids (e.g. :func:`word_tokenizer`).
    n_layers : int
        Decoder blocks (>= 1).
    hidden : int
        Width (divisible by ``heads``).
    heads : int
        Attention heads (as many key/value heads).
    intermediate : int or None
        MLP width (default ``2 * hidden``).
    max_length : int
        Longest sequence (positions).
    seed : int
        ``torch.manual_seed`` for the initialisation (the global torch RNG is restored
        afterwards).
    arch : {"llama", "gpt2"}
        ``"llama"``: rotary positions, RMSNorm, SwiGLU MLP, ``nn.Linear`` projections;
        ``"gpt2"``: learned absolute positions, LayerNorm, GELU MLP, ``Conv1D``
        projections (peft adapts both).

    Returns
    -------
    transformers.LlamaForCausalLM or transformers.GPT2LMHeadModel
        In float32, eval mode, untied input and output embeddings.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    for name, v, lo in (("n_layers", n_layers, 1), ("hidden", hidden, 1), ("heads", heads, 1),
                        ("max_length", max_length, 2)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise SpecError(f"tiny LM {name} must be an integer >= {lo}, got {v!r}")
    if hidden % heads:
        raise SpecError(f"tiny LM hidden ({hidden}) must be divisible by heads ({heads})")
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": False}
    inner = int(intermediate or 2 * hidden)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inner,
                          num_hidden_layers=n_layers, num_attention_heads=heads,
                          num_key_value_heads=heads, max_position_embeddings=max_length, **ids)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_inner=inner,
                         n_layer=n_layers, n_head=heads, n_positions=max_length,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    else:
        raise SpecError(f"tiny LM arch must be 'llama' or 'gpt2', got {arch!r}")
    outer = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.random.set_rng_state(outer)
    return model.float().eval()


def save_lm(model, tokenizer, directory: str | os.PathLike) -> None:
    """Write model and tokenizer with ``save_pretrained`` (readable by :func:`load_lm`)."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def load_lm(directory: str | os.PathLike, *, device_map: Any = None, dtype: Any = None):
    """Load a causal LM and its tokenizer from a local checkpoint directory.

    Parameters
    ----------
    directory : str or os.PathLike
        Holds ``config.json``, the weights and the tokenizer files; nothing is downloaded
        (``local_files_only=True``).
    device_map : str, dict or None
        Passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over GPUs;
        needs ``accelerate``). None: CPU.
    dtype : torch.dtype, str or None
        E.g. ``"bfloat16"`` for large models. None: as stored.

    Returns
    -------
    model, tokenizer
        The model in eval mode; the tokenizer with a pad token (its EOS when it had none).

    Raises
    ------
    SpecError
        If the directory does not exist, has no ``config.json``, or cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(directory)
    if not d.is_dir():
        raise SpecError(f"LM checkpoint directory '{os.fspath(directory)}' not found; expected "
                        f"a directory with config.json, weights and tokenizer files")
    if not (d / "config.json").is_file():
        raise SpecError(f"LM checkpoint directory '{os.fspath(directory)}' has no config.json; "
                        f"expected a transformers checkpoint (save_pretrained layout)")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(d, **kwargs)
    except Exception as exc:  # corrupt or foreign files: transformers raises many types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"LM checkpoint '{os.fspath(directory)}' could not be loaded "
                        f"({type(exc).__name__}: {msg})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def decoder_blocks(model):
    """The model's decoder blocks (a ``torch.nn.ModuleList``), for any wrapping.

    Found as the module list whose length is ``config.num_hidden_layers`` (Llama, Qwen,
    Mistral, GPT-2, GPT-NeoX, Phi, Gemma...; also inside a ``peft`` wrapper).
    """
    import torch

    n = n_layers(model)
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise SpecError(f"could not find the {n} decoder blocks of {type(model).__name__}; "
                    f"expected a ModuleList of config.num_hidden_layers blocks")


def n_layers(model) -> int:
    """Number of decoder blocks (``config.num_hidden_layers``); layers are ``0..n``."""
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None)
    if n is None and hasattr(cfg, "get_text_config"):
        n = getattr(cfg.get_text_config(), "num_hidden_layers", None)
    if n is None:
        raise SpecError(f"{type(model).__name__} config has no num_hidden_layers")
    return int(n)


def _layer_module(model, layer: int):
    n = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= n:
        raise SpecError(f"layer must be an integer in [0, {n}] (0: embeddings, l: output of "
                        f"block l) for this {n}-block model, got {layer!r}")
    if layer == 0:
        return model.get_input_embeddings()
    return decoder_blocks(model)[int(layer) - 1]


def _replace_hidden(output, new):
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    if hasattr(output, "last_hidden_state") and not hasattr(output, "shape"):
        output.last_hidden_state = new
        return output
    return new


def _hidden_of(output):
    if isinstance(output, tuple):
        return output[0]
    if hasattr(output, "last_hidden_state") and not hasattr(output, "shape"):
        return output.last_hidden_state
    return output


# -------------------------------------------------------------------------------- problems


@dataclass
class EncodedProblems:
    """Token ids of every (problem, option) pair, right-padded.

    Attributes
    ----------
    input_ids : torch.LongTensor, shape (n, n_options, T)
        ``[BOS] prompt option`` then padding (``n_options`` is the largest count; pairs
        beyond a problem's own options are padding only).
    attention_mask : torch.LongTensor, shape (n, n_options, T)
    option_mask : torch.BoolTensor, shape (n, n_options, T)
        True at the positions of option tokens (their log-probabilities are read from the
        logits one position earlier).
    option_valid : torch.BoolTensor, shape (n, n_options)
    prompt_start : torch.LongTensor, shape (n,)
        First prompt token after BOS (0 without BOS).
    prompt_end : torch.LongTensor, shape (n,)
        One past the last prompt token.
    correct : torch.LongTensor, shape (n,)
    """

    input_ids: Any
    attention_mask: Any
    option_mask: Any
    option_valid: Any
    prompt_start: Any
    prompt_end: Any
    correct: Any

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, idx) -> EncodedProblems:
        """Problems ``idx`` (int tensor/array), trimmed to their longest sequence."""
        import torch

        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        am = self.attention_mask[idx]
        t = int(am.sum(-1).max()) if am.numel() else 1
        return EncodedProblems(self.input_ids[idx, :, :t], am[:, :, :t],
                               self.option_mask[idx, :, :t], self.option_valid[idx],
                               self.prompt_start[idx], self.prompt_end[idx], self.correct[idx])

    def to(self, device) -> EncodedProblems:
        return EncodedProblems(*(getattr(self, f).to(device) for f in (
            "input_ids", "attention_mask", "option_mask", "option_valid", "prompt_start",
            "prompt_end", "correct")))


def encode_problems(tokenizer, problems, max_length: int | None = None) -> EncodedProblems:
    """Tokenise every (problem, option) pair of a :class:`~raybrain.data.reasoning.ProblemSet`.

    The option's tokens are those of ``prompt + " " + option`` beyond the prompt's own
    tokens when the prompt's tokens are a prefix of them (BPE tokenizers that merge
    across the boundary fall back to the prompt's tokens followed by those of
    ``" " + option`` without special tokens).

    Raises
    ------
    SpecError
        If an option has no tokens, or a sequence is longer than ``max_length``
        (default: the tokenizer's ``model_max_length`` when it is finite).
    """
    import torch

    n = len(problems)
    if n == 0:
        raise SpecError("encode_problems: the problem set is empty")
    n_opt = max(len(o) for o in problems.options)
    seqs, starts, ends = [], [], []
    bos = tokenizer.bos_token_id
    for i in range(n):
        prompt = problems.texts[i]
        p_ids = tokenizer(prompt)["input_ids"]
        row = []
        for opt in problems.options[i]:
            full = tokenizer(prompt + " " + opt)["input_ids"]
            if full[:len(p_ids)] == p_ids and len(full) > len(p_ids):
                o_ids = full[len(p_ids):]
            else:
                o_ids = tokenizer(" " + opt, add_special_tokens=False)["input_ids"]
            if not o_ids:
                raise SpecError(f"problem {problems.ids[i]!r}: option {opt!r} has no tokens")
            row.append((list(p_ids), list(o_ids)))
        seqs.append(row)
        starts.append(1 if (bos is not None and p_ids and p_ids[0] == bos) else 0)
        ends.append(len(p_ids))
    t_max = max(len(p) + len(o) for row in seqs for p, o in row)
    limit = max_length
    if limit is None:
        m = getattr(tokenizer, "model_max_length", None)
        limit = m if isinstance(m, int) and m < 10**9 else None
    if limit is not None and t_max > limit:
        raise SpecError(f"a problem with its option is {t_max} tokens long; the model takes at "
                        f"most {limit}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, n_opt, t_max), int(pad), dtype=torch.long)
    am = torch.zeros((n, n_opt, t_max), dtype=torch.long)
    om = torch.zeros((n, n_opt, t_max), dtype=torch.bool)
    valid = torch.zeros((n, n_opt), dtype=torch.bool)
    for i, row in enumerate(seqs):
        for j, (p_ids, o_ids) in enumerate(row):
            s = p_ids + o_ids
            ids[i, j, :len(s)] = torch.tensor(s)
            am[i, j, :len(s)] = 1
            om[i, j, len(p_ids):len(s)] = True
            valid[i, j] = True
    if any(e - s < 1 for s, e in zip(starts, ends)):
        k = next(i for i, (s, e) in enumerate(zip(starts, ends)) if e - s < 1)
        raise SpecError(f"problem {problems.ids[k]!r} has an empty prompt")
    return EncodedProblems(ids, am, om, valid, torch.tensor(starts), torch.tensor(ends),
                           torch.as_tensor(problems.correct, dtype=torch.long))


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise SpecError(f"pool must be one of {list(POOLS)}, got {pool!r}")


def _pool_states(h, enc: EncodedProblems, pool: str):
    """Pool (b, T, H) prompt-sequence states to (b, H)."""
    import torch

    b, t, _ = h.shape
    start = enc.prompt_start.to(h.device)
    end = enc.prompt_end.to(h.device)
    if pool == "last":
        return h[torch.arange(b, device=h.device), end - 1]
    pos = torch.arange(t, device=h.device)[None, :]
    w = ((pos >= start[:, None]) & (pos < end[:, None])).to(h.dtype)
    return (h * w[:, :, None]).sum(1) / w.sum(1, keepdim=True)


def _model_device(model):
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def forward_problems(model, enc: EncodedProblems, layers=(), pool: str = "mean"):
    """Option log-probabilities and pooled layer states of a batch (differentiable).

    Parameters
    ----------
    model : causal LM (possibly wrapped by ``peft``)
    enc : EncodedProblems
        The batch (e.g. ``encoded.select(idx)``).
    layers : iterable of int
        Layers whose pooled prompt states to return (0: embeddings, l: block l).
    pool : {"mean", "last"}

    Returns
    -------
    logprobs : torch.Tensor, shape (b, n_options)
        Sum of the option's token log-probabilities given the prompt; ``-inf`` for
        padding options.
    states : dict of int -> torch.Tensor of shape (b, hidden)
    """
    import torch

    _check_pool(pool)
    layers = [int(v) for v in layers]
    mods = {lay: _layer_module(model, lay) for lay in layers}
    enc = enc.to(_model_device(model))
    b, o, t = enc.input_ids.shape
    # one-token options (e.g. "yes"/"no"): every option's log-probability is read from the
    # prompt's last position of a single sequence per problem (prompts are shared)
    single = bool((enc.option_mask.sum(-1) <= 1).all())
    seq_ids = enc.input_ids[:, 0] if single else enc.input_ids.reshape(b * o, t)
    seq_mask = enc.attention_mask[:, 0] if single else enc.attention_mask.reshape(b * o, t)
    captured: dict[int, Any] = {}
    handles = []

    def make_hook(lay):
        def hook(_mod, _inp, out):
            captured[lay] = _hidden_of(out)
        return hook

    for lay, mod in mods.items():
        handles.append(mod.register_forward_hook(make_hook(lay)))
    try:
        out = model(input_ids=seq_ids, attention_mask=seq_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if single:
        rows = torch.arange(b, device=seq_ids.device)
        last = torch.log_softmax(out.logits[rows, enc.prompt_end - 1].float(), dim=-1)  # (b, V)
        opt_tok = enc.input_ids.gather(2, enc.prompt_end[:, None, None].expand(b, o, 1))[..., 0]
        lp = last.gather(1, opt_tok)
    else:
        logits = out.logits[:, :-1].float()
        target = seq_ids[:, 1:]
        tok_lp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None])[..., 0]
        mask = enc.option_mask.reshape(b * o, t)[:, 1:]
        lp = (tok_lp * mask).sum(-1).reshape(b, o)
    lp = lp.masked_fill(~enc.option_valid, float("-inf"))
    states = {}
    for lay in layers:
        h = captured[lay] if single else captured[lay].reshape(b, o, t, -1)[:, 0]
        states[lay] = _pool_states(h, enc, pool)
    return lp, states


def option_cross_entropy(logprobs, correct):
    """Mean cross-entropy of the correct option under ``softmax(logprobs)`` over options.

    Parameters
    ----------
    logprobs : torch.Tensor, shape (b, n_options)
    correct : torch.LongTensor, shape (b,)
    """
    import torch

    return torch.nn.functional.cross_entropy(logprobs, correct.to(logprobs.device))


def _batches(n: int, batch_size: int):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SpecError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for s in range(0, n, batch_size):
        yield np.arange(s, min(n, s + batch_size))


def score_problems(model, enc: EncodedProblems, batch_size: int = 32) -> np.ndarray:
    """Option log-probabilities of every problem, shape (n, n_options), float64, no grad.

    Padding options are ``-inf``; the predicted option is the row's argmax.
    """
    import torch

    rows = []
    with torch.no_grad():
        for idx in _batches(len(enc), batch_size):
            lp, _ = forward_problems(model, enc.select(idx))
            rows.append(lp.double().cpu().numpy())
    return np.concatenate(rows, axis=0)


def accuracy(logprobs: np.ndarray, correct, types=None) -> dict[str, float]:
    """Accuracy of argmax predictions, overall and per reasoning type.

    Parameters
    ----------
    logprobs : np.ndarray, shape (n, n_options)
    correct : array of int, shape (n,)
    types : sequence of str (length n) or None

    Returns
    -------
    dict
        ``"accuracy"`` and, with ``types``, ``"accuracy/<type>"`` for each type.
        Ties are broken towards the first option.
    """
    pred = np.argmax(np.asarray(logprobs), axis=1)
    hit = pred == np.asarray(correct)
    out = {"accuracy": float(hit.mean()) if hit.size else float("nan")}
    if types is not None:
        types = np.asarray(list(types))
        for t in dict.fromkeys(types.tolist()):
            out[f"accuracy/{t}"] = float(hit[types == t].mean())
    return out


def hidden_states(model, enc: EncodedProblems, layers=None, pool: str = "mean",
                  batch_size: int = 32) -> np.ndarray:
    """Pooled prompt states per layer, no grad.

    Parameters
    ----------
    layers : iterable of int or None
        Default: every layer ``0..n_layers``.
    pool : {"mean", "last"}

    Returns
    -------
    np.ndarray of float32, shape (len(layers), n_problems, hidden)
    """
    import torch

    if layers is None:
        layers = range(n_layers(model) + 1)
    layers = list(layers)
    out = [[] for _ in layers]
    with torch.no_grad():
        for idx in _batches(len(enc), batch_size):
            sub = enc.select(idx)
            sub = EncodedProblems(sub.input_ids[:, :1], sub.attention_mask[:, :1],
                                  sub.option_mask[:, :1], sub.option_valid[:, :1],
                                  sub.prompt_start, sub.prompt_end, sub.correct)
            _, states = forward_problems(model, sub, layers, pool)
            for k, lay in enumerate(layers):
                out[k].append(states[lay].float().cpu().numpy())
    return np.stack([np.concatenate(o, axis=0) for o in out]).astype(np.float32)


# --------------------------------------------------------------------- steering (inference)


class SteeringHook:
    """A registered steering hook; :meth:`remove` takes it off (idempotent).

    Attributes
    ----------
    layer : int
    alpha : float
    basis : torch.Tensor, shape (rank, hidden)
    """

    def __init__(self, handle, layer, alpha, basis):
        self._handle, self.layer, self.alpha, self.basis = handle, layer, alpha, basis

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _orthonormal_basis(basis, hidden: int):
    import torch

    b = torch.as_tensor(np.asarray(basis) if not torch.is_tensor(basis) else basis)
    b = b.detach().to(torch.float64)
    if b.ndim != 2 or b.shape[1] != hidden:
        raise SpecError(f"steering basis must have shape (rank, {hidden}), got "
                        f"{tuple(b.shape)}")
    if b.shape[0] < 1 or b.shape[0] > hidden:
        raise SpecError(f"steering rank must be in [1, {hidden}], got {b.shape[0]}")
    gram = b @ b.T
    if not torch.allclose(gram, torch.eye(b.shape[0], dtype=b.dtype), atol=1e-4):
        raise SpecError("steering basis rows must be orthonormal (B B^T = I); orthonormalise "
                        "it first (e.g. JointDirections.basis)")
    return b


def add_steering_hook(model, layer: int, basis, alpha: float, center=None) -> SteeringHook:
    """Steer layer ``layer``: every state ``h`` becomes ``h + alpha * B^T B (h - c)``.

    Parameters
    ----------
    model : causal LM
    layer : int
        0: embedding output; ``l`` in ``1..n_layers``: output of block ``l``.
    basis : array or tensor, shape (rank, hidden)
        Orthonormal rows ``B`` (e.g. ``JointDirections.basis``).
    alpha : float
        Strength; 0 leaves the model unchanged, -1 removes the subspace component.
    center : array or tensor of shape (hidden,) or None
        ``c``; None: 0.

    Returns
    -------
    SteeringHook
        Call ``remove()`` to restore the model exactly.
    """
    import torch

    mod = _layer_module(model, layer)
    hidden = model.get_input_embeddings().weight.shape[1]
    b64 = _orthonormal_basis(basis, hidden)
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        a = float("nan")
    if not np.isfinite(a):
        raise SpecError(f"steering alpha must be a finite number, got {alpha!r}")
    c64 = None
    if center is not None:
        c64 = torch.as_tensor(np.asarray(center) if not torch.is_tensor(center) else center)
        c64 = c64.detach().to(torch.float64).reshape(-1)
        if c64.shape[0] != hidden:
            raise SpecError(f"steering center must have shape ({hidden},), got "
                            f"{tuple(c64.shape)}")

    def hook(_mod, _inp, output):
        h = _hidden_of(output)
        b = b64.to(device=h.device, dtype=h.dtype)
        x = h if c64 is None else h - c64.to(device=h.device, dtype=h.dtype)
        return _replace_hidden(output, h + a * ((x @ b.T) @ b))

    handle = mod.register_forward_hook(hook)
    return SteeringHook(handle, int(layer), a, b64)


@contextlib.contextmanager
def steer(model, layer: int, basis, alpha: float, center=None):
    """Context manager around :func:`add_steering_hook`; the hook is removed on exit.

    Example
    -------
    >>> with steer(model, layer=2, basis=dirs.basis, alpha=1.0):   # doctest: +SKIP
    ...     lp = score_problems(model, enc)
    """
    hook = add_steering_hook(model, layer, basis, alpha, center)
    try:
        yield hook
    finally:
        hook.remove()


# ------------------------------------------------------------------- steering (fine-tuning)


def add_adapters(model, method: str = "lora", rank: int = 8, lora_alpha: float | None = None,
                 dropout: float = 0.0, target_modules: Any = "all-linear"):
    """Wrap the model's linear layers with LoRA or DoRA adapters (``peft``).

    Parameters
    ----------
    model : causal LM
    method : {"lora", "dora"}
        DoRA (``use_dora=True``) adds a learned magnitude per output unit.
    rank : int
        Adapter rank (>= 1).
    lora_alpha : float or None
        Scaling numerator (the update is ``lora_alpha / rank * B A``); default ``2 * rank``.
    dropout : float
        Dropout on the adapters' input.
    target_modules : str or list of str
        ``"all-linear"`` (every linear layer of the blocks, not the output head) or module
        names.

    Returns
    -------
    peft.PeftModel
        Only the adapters (and DoRA magnitudes) require gradients. ``B`` starts at zero,
        so the wrapped model equals the base model before training.
    """
    from peft import LoraConfig, get_peft_model

    if method not in ("lora", "dora"):
        raise SpecError(f"adapter method must be 'lora' or 'dora', got {method!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise SpecError(f"adapter rank must be an integer >= 1, got {rank!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise SpecError(f"adapter dropout must be in [0, 1), got {dropout!r}")
    from transformers.pytorch_utils import Conv1D

    # GPT-2-style Conv1D projections store (in, out) weights: peft must be told so
    conv1d = any(isinstance(mod, Conv1D) for mod in model.modules())
    cfg = LoraConfig(r=int(rank), lora_alpha=float(lora_alpha or 2 * rank),
                     lora_dropout=float(dropout), target_modules=target_modules,
                     use_dora=(method == "dora"), task_type="CAUSAL_LM", bias="none",
                     fan_in_fan_out=conv1d)
    return get_peft_model(model, cfg)


def finetune_loss(model, enc: EncodedProblems, *, layer: int, pool: str = "mean",
                  alpha: float = 0.0, basis=None, targets=None) -> dict[str, Any]:
    """Brain-steering fine-tuning loss of a batch: ``CE_options + alpha * L_dir``.

    Parameters
    ----------
    model : causal LM (usually wrapped by :func:`add_adapters`)
    enc : EncodedProblems
        The batch, shape (b, ...).
    layer : int
        Layer whose pooled states are pulled along the directions.
    pool : {"mean", "last"}
    alpha : float
        Weight of the brain term (>= 0). 0: language-only (the term is not computed).
    basis : tensor or array, shape (rank, hidden)
        Orthonormal joint directions (``JointDirections.basis``).
    targets : tensor or array, shape (b, rank)
        The brain's coordinates of the batch's problems on the directions
        (``JointDirections.brain_coordinates``), standardised per direction.

    Returns
    -------
    dict
        ``loss`` (scalar tensor to backpropagate), ``task_loss`` and ``brain_loss``
        (detached floats; ``brain_loss`` is NaN when the term is off), ``logprobs``
        (detached, shape (b, n_options)).
    """
    import torch

    from raybrain.align.steering import direction_alignment_loss

    a = float(alpha)
    if not (np.isfinite(a) and a >= 0):
        raise SpecError(f"steering alpha must be a finite number >= 0, got {alpha!r}")
    use_brain = a > 0 and basis is not None
    if use_brain and targets is None:
        raise SpecError("finetune_loss needs the brain targets when alpha > 0 and a basis is "
                        "given")
    lp, states = forward_problems(model, enc, [layer] if use_brain else [], pool)
    task = option_cross_entropy(lp, enc.correct)
    loss = task
    brain_val = float("nan")
    if use_brain:
        h = states[layer]
        b = torch.as_tensor(np.asarray(basis) if not torch.is_tensor(basis) else basis)
        y = torch.as_tensor(np.asarray(targets) if not torch.is_tensor(targets) else targets)
        brain = direction_alignment_loss(h, b.to(h.device, h.dtype), y.to(h.device, h.dtype))
        loss = task + a * brain
        brain_val = float(brain.detach())
    return {"loss": loss, "task_loss": float(task.detach()), "brain_loss": brain_val,
            "logprobs": lp.detach()}


def finetune_epoch(model, optimizer, enc: EncodedProblems, order, batch_size: int, *,
                   layer: int, pool: str = "mean", alpha: float = 0.0, basis=None,
                   targets=None) -> dict[str, float]:
    """One pass of steering fine-tuning over the training problems in ``order``.

    Parameters
    ----------
    model : causal LM (adapters added, or fully trainable)
    optimizer : torch.optim.Optimizer
        Over the trainable parameters.
    enc : EncodedProblems
        All training problems.
    order : array of int, shape (n_train,)
        Problem order of this epoch (e.g. a seeded permutation); consecutive chunks of
        ``batch_size`` are the batches. A last chunk of one problem is skipped (a batch
        correlation needs two) and the number of problems trained on is returned.
    batch_size : int
        >= 2.
    layer, pool, alpha, basis
        As in :func:`finetune_loss`.
    targets : array or tensor, shape (n_train, rank) or None
        Brain coordinates of all training problems (rows as in ``enc``).

    Returns
    -------
    dict
        Means over batches of ``loss``, ``task_loss``, ``brain_loss`` (NaN when off), and
        ``n_problems``.
    """
    import torch

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 2:
        raise SpecError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    order = np.asarray(order, dtype=np.int64)
    y_all = None
    if targets is not None:
        y_all = torch.as_tensor(np.asarray(targets) if not torch.is_tensor(targets) else targets)
    model.train()
    sums = {"loss": 0.0, "task_loss": 0.0, "brain_loss": 0.0}
    n_batches = n_seen = 0
    for s in range(0, order.size, batch_size):
        idx = order[s:s + batch_size]
        if idx.size < 2:
            continue
        out = finetune_loss(model, enc.select(idx), layer=layer, pool=pool, alpha=alpha,
                            basis=basis, targets=None if y_all is None else y_all[idx])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        sums["loss"] += float(out["loss"].detach())
        sums["task_loss"] += out["task_loss"]
        sums["brain_loss"] += out["brain_loss"]
        n_batches += 1
        n_seen += int(idx.size)
    model.eval()
    res = {k: v / max(n_batches, 1) for k, v in sums.items()}
    res["n_problems"] = float(n_seen)
    return res
