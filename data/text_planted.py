"""The embedded text default: generated short phrases (or sentence pairs) and instructions in planted groups (offline).

Rule ``"polarity"`` (the default): each example is one short phrase naming one value of four attributes (colour,
animal, place, action), "the red fox ran by the lake" (~10 tokens, so that every step is cheap on a CPU: the cost
of a text step grows with the input length). Group g < 4 asks whether attribute g is of a given kind (a warm colour,
a bird, a place by water, a moving action); group g + 4, if asked for, asks for the complement (a cool colour, ...,
label flipped). Each group has its own prefix and answer words, its instructions are different (question, layout)
pairs: "Question: Is the colour warm? the red fox ran by the lake", "a grey owl sat near the hill. Quiz. Bird, yes or
no?". Each attribute's answer is drawn independently with probability 1/2 for every example.

The two older rules ask about two sentences ("The red fox ran by the river at dawn."), ~45 tokens per input:

- ``rule="match"``: do both sentences name the same value of the attribute?
- ``rule="kind"``: is the second sentence's value of the attribute of a given kind?

Why the truth has structure (measured with MiniLM + LoRA, README "The embedded text default"):

- Within a group, tasks share their labelling rule exactly and differ only in wording and in which examples they
  get; each task has few training examples, so the other tasks of its group are extra data for the same rule: they
  help.
- Across groups (different attributes), labels on the same input are independent: another group's examples teach
  nothing about this group's rule and take a share of a shared update: neutral at best.
- Complement groups (g and g + 4) do not conflict once θ* reads the question: measured (an earlier 2-attribute
  layout), a partner of the other pole lowered a task's validation loss by 0.03 per partner (pooled over tasks), a
  same-group one by 0.06: they share the attribute's features, so one attribute is one cluster; the default's four
  groups ask about four different attributes.

The true grouping, task t in group ``t // tasks_per_group``, is what later steps are scored against.
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
RULES = ("polarity", "match", "kind")
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
    ("Answer this:", "Nope ||| Yep"),
    ("Please reply.", "Disagree ||| Agree"),
    ("Q:", "N ||| Y"),
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
# Rule "polarity": per attribute, the two opposite questions (kind, its complement) asked of one short phrase.
# attribute -> (noun in questions, the answer-1 description of group 2a, that of group 2a + 1 (the complement))
POLES = {
    "colour": ("colour", "warm", "cool"),
    "animal": ("animal", "a bird", "a mammal"),
    "place": ("place", "by water", "on dry land"),
    "action": ("action", "moving", "resting"),
}
PHRASES = (  # one short phrase per example (few tokens: the text default's cost grows with the input length)
    "the {colour} {animal} {action} by the {place}",
    "a {colour} {animal} {action} near the {place}",
    "by the {place} a {colour} {animal} {action}",
)
POLE_QUESTIONS = (
    "Is the {noun} {word}?",
    "{Noun}: {word}?",
    "Would you say the {noun} is {word}?",
    "Is it {word}?",
    "{Word}, yes or no?",
    "Tell me if the {noun} is {word}.",
)
POLE_LAYOUTS = ("{q} {{{{phrase}}}}", "{{{{phrase}}}}. {q}", "{{{{phrase}}}} - {q}")
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
    if rule == "polarity":
        values, labels = {}, {}
        for attribute in POLES:
            _, _, kind, other = ATTRIBUTES[attribute]
            answer = int(rng.random() < 0.5)
            pool = kind if answer else other
            values[attribute] = pool[rng.integers(len(pool))]
            labels[f"label_{attribute}"] = answer
        return {"phrase": PHRASES[rng.integers(len(PHRASES))].format(**values), **labels}
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
    most = 2 * len(POLES) if rule == "polarity" else min(len(ATTRIBUTES), len(STYLES))
    if num_groups < 1 or num_groups > most:
        raise UsageError(f"the text default has 1 to {most} groups, not {num_groups}")
    if num_instructions < num_groups or num_instructions % num_groups:
        raise UsageError(f"--num-tasks {num_instructions} must be a positive multiple of the number of groups {num_groups}")
    per_group = num_instructions // num_groups
    if rule == "polarity":
        return _polarity_templates(num_groups, per_group, seed)
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


def _polarity_templates(num_groups: int, per_group: int, seed: int) -> tuple[list[Template], list[list[int]]]:
    """Rule "polarity": group g asks whether attribute ``list(POLES)[g % 4]`` of the phrase is of its first kind
    (g < 4) or of the complementary one (g >= 4; the label is flipped), in style g; names
    ``g<group>_<attribute>_<pole>_t<k>``. Up to four groups thus ask about four different attributes."""
    combos = list(itertools.product(range(len(POLE_QUESTIONS)), range(len(POLE_LAYOUTS))))
    if per_group > len(combos):
        raise UsageError(f"the text default has at most {len(combos)} distinct instructions per group, not {per_group}")
    templates, groups = [], []
    for group in range(num_groups):
        attribute, pole = list(POLES)[group % len(POLES)], group // len(POLES)
        noun, word = POLES[attribute][0], POLES[attribute][1 + pole]
        prefix, choices = STYLES[group]
        label = f"label_{attribute}" if pole == 0 else f"1 - label_{attribute}"
        order = np.random.default_rng([seed, group]).permutation(len(combos))[:per_group]
        groups.append(list(range(len(templates), len(templates) + per_group)))
        for k, combo in enumerate(order):
            question, layout = combos[combo]
            asked = POLE_QUESTIONS[question].format(noun=noun, Noun=noun.capitalize(), word=word, Word=word.capitalize())
            jinja = POLE_LAYOUTS[layout].format(q=f"{prefix} {asked}") + f" ||| {{{{ answer_choices[{label}] }}}}"
            name = f"g{group}_{attribute}_{word.split()[-1]}_t{k}"
            templates.append(Template(name, jinja, choices, source=NAME))
    return templates, groups


def generate_text_default(
    seed: int = 0,
    num_instructions: int = 20,
    num_groups: int = 4,
    pool_sizes: tuple[int, int, int] = (1000, 400, 800),
    rule: str = "polarity",
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
    fields = ("phrase",) if rule == "polarity" else ("sentence1", "sentence2")
    records, seen = [], set()
    while len(records) < sum(pool_sizes):
        example = _example(rng, rule)
        key = tuple(example[field] for field in fields)
        if key not in seen:
            seen.add(key)
            records.append(example)
    splits, start = {}, 0
    for split, size in zip(SPLITS, pool_sizes, strict=True):
        labels = np.full(size, -1, dtype=np.int64)
        splits[split] = TextExamples(NAME, split, records[start : start + size], labels, fields, NAME)
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
    rule: str = "polarity",
    split_seed: int = 0,
    data_dir: str | Path | None = None,
    recommended: dict | None = None,
) -> TextDataset:
    """The embedded text default as a :class:`TextDataset` (:func:`generate_text_default`, then
    :func:`build_text_dataset` with ``examples_per_task`` / ``val_per_task`` / ``test_per_task`` samples per task drawn
    from ``split_seed``). With ``data_dir`` its planted groups and generator files are written there
    (:func:`write_text_default_files`). ``recommended``: the training settings the steps take unless told otherwise."""
    splits, templates, groups = generate_text_default(seed, num_instructions, num_groups, pool_sizes, rule)
    options = dict(text_seed=seed, num_tasks=num_instructions, planted_groups=num_groups, pool_sizes=list(pool_sizes), rule=rule)
    dataset = build_text_dataset(
        NAME, splits, templates, examples_per_task, val_per_task, test_per_task, split_seed, groups, options, recommended
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
