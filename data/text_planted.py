"""The embedded text default: generated sentence pairs whose instructions come in planted groups (offline, tiny).

Each example is a pair of short sentences built from a small vocabulary, each sentence naming one value of every
attribute (colour, animal, place, time, action): "The red fox ran by the river at dawn." Instruction group g asks
about attribute g only, in its own wording style (a prefix and a pair of answer words); its instructions are
paraphrases of one question in different layouts. The label of an (example, instruction) pair is the answer for
the group's attribute:

- ``rule="match"`` (a sentence-pair task, the default): do both sentences name the same value of the attribute?
- ``rule="kind"`` (easier: linear in the words): is the second sentence's value of the attribute of a given kind
  (a warm colour, a bird, a place by water, daylight, a moving action)?

Every attribute's answer is drawn independently with probability 1/2 for every example, so why it should have
structure:

- Within a group, tasks share their labelling rule exactly and differ only in wording and in which examples they
  get; each task has few training examples, so the other tasks of its group are extra data for the same rule: they
  help.
- Across groups, labels on the same input are independent: another group's examples teach nothing about this
  group's rule, and a model with a shared output (or a narrow shared adapter) must spend capacity on them, or is
  taught the wrong answer for inputs that differ only in the question: they are neutral at best, usually harmful.

The true grouping, task t in group ``t // tasks_per_group``, is what later steps are scored against. Not vetted
with a model here: whether MiniLM + LoRA learns the rule in a few epochs is for the benchmark to measure.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from data.templates import Template, write_instructions
from data.text import SPLITS, TextDataset, TextExamples, build_text_dataset
from gradtag.artifacts import UsageError, atomic_path, write_json

NAME = "text_planted"
RULES = ("match", "kind")
# attribute -> (noun in questions, the kind (rule "kind": a noun phrase), values of that kind, the other values)
ATTRIBUTES = {
    "colour": ("colour", "a warm colour", ("red", "orange", "yellow", "pink"), ("blue", "green", "purple", "grey")),
    "animal": ("animal", "a bird", ("owl", "crow", "duck", "eagle"), ("fox", "horse", "rabbit", "dog")),
    "place": ("place", "a place by water", ("river", "lake", "beach", "harbour"), ("forest", "desert", "hill", "field")),
    "time": (
        "time of day",
        "a time of daylight",
        ("at dawn", "in the morning", "at noon", "in the afternoon"),
        ("in the evening", "at dusk", "at night", "at midnight"),
    ),
    "action": ("action", "a moving action", ("ran", "jumped", "danced", "raced"), ("slept", "rested", "waited", "sat")),
}
# Sentence frames; each sentence picks one, so an attribute's word is not always at the same position.
FRAMES = (
    "The {colour} {animal} {action} by the {place} {time}.",
    "{Time}, the {colour} {animal} {action} near the {place}.",
    "Near the {place}, one {colour} {animal} {action} {time}.",
)
# Per group: a prefix and answer words (negative first: label 0), so a group has its own wording style.
STYLES = (
    ("Question:", "No ||| Yes"),
    ("Quiz.", "False ||| True"),
    ("Check this:", "Wrong ||| Right"),
    ("Task:", "Incorrect ||| Correct"),
    ("Tell me.", "Negative ||| Positive"),
)
QUESTIONS = {
    "match": (
        "Do the two sentences mention the same {noun}?",
        "Is the {noun} the same in both sentences?",
        "Does the second sentence have the {noun} of the first one?",
        "Same {noun} in sentence A and sentence B?",
        "Do both sentences agree on the {noun}?",
        "Is the {noun} of the first sentence repeated in the second?",
    ),
    "kind": (
        "Does the second sentence mention {kind}?",
        "Is {kind} named in the second sentence?",
        "Sentence B: does it contain {kind}?",
        "Does the latter sentence speak of {kind}?",
        "Is the {noun} of the second sentence {kind}?",
        "Would you say the second sentence has {kind}?",
    ),
}
# Where the sentences go relative to the question ({q}: the prefix and question; {a}: the answer words).
LAYOUTS = (
    "{q}\nSentence A: {{{{sentence1}}}}\nSentence B: {{{{sentence2}}}}\nAnswer {a}.",
    "{{{{sentence1}}}}\n{{{{sentence2}}}}\n{q}",
    "A: {{{{sentence1}}}} B: {{{{sentence2}}}} {q} {a}?",
)


def _sentence(rng: np.random.Generator, values: dict) -> str:
    frame = FRAMES[rng.integers(len(FRAMES))]
    return frame.format(**values, Time=values["time"][0].upper() + values["time"][1:])


def _example(rng: np.random.Generator, rule: str) -> dict:
    first, second, labels = {}, {}, {}
    for attribute, (_, _, kind, other) in ATTRIBUTES.items():
        values = kind + other
        answer = int(rng.random() < 0.5)
        if rule == "match":
            first[attribute] = values[rng.integers(len(values))]
            rest = [value for value in values if value != first[attribute]]
            second[attribute] = first[attribute] if answer else rest[rng.integers(len(rest))]
        else:
            first[attribute] = values[rng.integers(len(values))]
            pool = kind if answer else other
            second[attribute] = pool[rng.integers(len(pool))]
        labels[f"label_{attribute}"] = answer
    return {"sentence1": _sentence(rng, first), "sentence2": _sentence(rng, second), **labels}


def default_templates(num_instructions: int, num_groups: int, rule: str, seed: int) -> tuple[list[Template], list[list[int]]]:
    """The instructions of the default and their planted groups: group g's ``num_instructions // num_groups``
    instructions ask about attribute g (a key of :data:`ATTRIBUTES`, in order) in style g, each a different
    (question, layout) pair drawn from ``seed``. Task names ``g<group>_<attribute>_t<k>``."""
    if rule not in RULES:
        raise UsageError(f"unknown rule {rule!r} for the text default: choose one of {', '.join(RULES)}")
    if num_groups < 1 or num_groups > min(len(ATTRIBUTES), len(STYLES)):
        raise UsageError(f"the text default has 1 to {min(len(ATTRIBUTES), len(STYLES))} groups, not {num_groups}")
    if num_instructions < num_groups or num_instructions % num_groups:
        raise UsageError(f"--num-tasks {num_instructions} must be a positive multiple of the number of groups {num_groups}")
    per_group = num_instructions // num_groups
    combos = list(itertools.product(range(len(QUESTIONS[rule])), range(len(LAYOUTS))))
    if per_group > len(combos):
        raise UsageError(f"the text default has at most {len(combos)} distinct instructions per group, not {per_group}")
    templates, groups = [], []
    for group, attribute in enumerate(list(ATTRIBUTES)[:num_groups]):
        noun, kind, _, _ = ATTRIBUTES[attribute]
        prefix, choices = STYLES[group]
        words = " or ".join(word.strip() for word in choices.split("|||"))
        order = np.random.default_rng([seed, group]).permutation(len(combos))[:per_group]
        groups.append(list(range(len(templates), len(templates) + per_group)))
        for k, combo in enumerate(order):
            question, layout = combos[combo]
            text = prefix + " " + QUESTIONS[rule][question].format(noun=noun, kind=kind)
            jinja = LAYOUTS[layout].format(q=text, a=words) + f" ||| {{{{ answer_choices[label_{attribute}] }}}}"
            templates.append(Template(f"g{group}_{attribute}_t{k}", jinja, choices, source=NAME))
    return templates, groups


def generate_text_default(
    seed: int = 0,
    num_instructions: int = 20,
    num_groups: int = 4,
    pool_sizes: tuple[int, int, int] = (1000, 400, 800),
    rule: str = "match",
) -> tuple[dict[str, TextExamples], list[Template], list[list[int]]]:
    """Generate the default's example pools, its instructions and the planted groups, all from ``seed``.

    Returns split -> :class:`TextExamples` (``pool_sizes`` train, val and test examples; no sentence pair occurs
    twice, so pools are disjoint), the ``num_instructions`` templates (:func:`default_templates`) and the planted
    groups (lists of task indices). Records hold ``sentence1``, ``sentence2`` and one int ``label_<attribute>`` per
    attribute; ``labels`` is -1 throughout: the data has no single label, each instruction's target reads its
    group's ``label_<attribute>``.
    """
    templates, groups = default_templates(num_instructions, num_groups, rule, seed)
    rng = np.random.default_rng([seed, 1000])
    records, seen = [], set()
    while len(records) < sum(pool_sizes):
        example = _example(rng, rule)
        if (example["sentence1"], example["sentence2"]) not in seen:
            seen.add((example["sentence1"], example["sentence2"]))
            records.append(example)
    splits, start = {}, 0
    for split, size in zip(SPLITS, pool_sizes, strict=True):
        labels = np.full(size, -1, dtype=np.int64)
        splits[split] = TextExamples(NAME, split, records[start : start + size], labels, ("sentence1", "sentence2"), NAME)
        start += size
    return splits, templates, groups


def load_text_default(
    seed: int = 0,
    num_instructions: int = 20,
    num_groups: int = 4,
    examples_per_task: int = 40,
    val_per_task: int = 40,
    test_per_task: int = 100,
    pool_sizes: tuple[int, int, int] = (1000, 400, 800),
    rule: str = "match",
    split_seed: int = 0,
    data_dir: str | Path | None = None,
) -> TextDataset:
    """The embedded text default as a :class:`TextDataset` (:func:`generate_text_default`, then
    :func:`build_text_dataset` with ``examples_per_task`` / ``val_per_task`` / ``test_per_task`` samples per task drawn
    from ``split_seed``). With ``data_dir`` its planted groups and generator files are written there
    (:func:`write_text_default_files`)."""
    splits, templates, groups = generate_text_default(seed, num_instructions, num_groups, pool_sizes, rule)
    options = dict(text_seed=seed, num_tasks=num_instructions, planted_groups=num_groups, pool_sizes=list(pool_sizes), rule=rule)
    dataset = build_text_dataset(
        NAME, splits, templates, examples_per_task, val_per_task, test_per_task, split_seed, groups, options
    )
    if data_dir is not None:
        write_text_default_files(data_dir, dataset)
    return dataset


def write_text_default_files(dataset_dir: str | Path, dataset: TextDataset) -> None:
    """Write ``planted_groups.txt`` (the groups format ``data.read_planted_groups`` reads), ``generator.json``
    (fingerprint, options, task names), ``instructions.jsonl`` and the example pools (``<split>.jsonl``) into
    ``dataset_dir``; nothing is rewritten when ``generator.json`` already records this fingerprint."""
    from data import planted_groups_path  # here, not at the top: data/__init__ may import this module
    from gradtag.results import write_subsets

    dataset_dir = Path(dataset_dir)
    meta_path = dataset_dir / "generator.json"
    if meta_path.is_file() and dataset.fingerprint in meta_path.read_text():
        return
    for split in SPLITS:
        with atomic_path(dataset_dir / f"{split}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(record) + "\n" for record in dataset.examples[split].records))
    write_instructions(dataset_dir / "instructions.jsonl", dataset.templates)
    write_subsets(
        planted_groups_path(dataset_dir),
        dataset.planted_groups,
        header=f"planted task groups of text dataset fingerprint {dataset.fingerprint}",
    )
    write_json(meta_path, {"fingerprint": dataset.fingerprint, "options": dataset.options, "task_names": dataset.task_names})
