"""Sentence-pair data sets as multitask data: one task per instruction (paper Sec. 5.1, text domain).

Every example rendered by instruction j is a sample of task j; its label is the data set's label (binary for RTE and
WiC), which is also the index of the rendered target among the instruction's answer choices. Examples come from
local JSONL files in SuperGLUE's field names (``train.jsonl``, ``val.jsonl``, optional ``test.jsonl``) or from the
Hugging Face hub; :func:`build_text_dataset` gives each instruction its own seeded sample of train, val and test
examples and renders them. Plain Python and numpy: no model code here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.templates import Template, check_templates
from gradtag.artifacts import UsageError, fingerprint, read_utf8

SPLITS = ("train", "val", "test")
HUB_DATASET = "super_glue"  # Hugging Face name of SuperGLUE; its configs are the data set names
_HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}

# Per data set: the text fields every example must have and the label words, SuperGLUE's convention (RTE
# entailment = 0, not_entailment = 1; WiC false = 0, true = 1). Ints 0/1 are taken as they are; -1 is unlabeled.
TEXT_DATASETS = {
    "rte": dict(fields=("premise", "hypothesis"), label_words={"entailment": 0, "not_entailment": 1}),
    "wic": dict(fields=("word", "sentence1", "sentence2"), label_words={"false": 0, "true": 1}),
}


@dataclass
class TextExamples:
    """One split of a sentence-pair data set.

    records: N dicts of the example's fields (``fields`` and any others the source has, e.g. ``idx``), no label.
    labels:  (N,) int64, the data set's label; -1 where the example is unlabeled.
    fields:  the text fields every record has (what templates may rely on).
    source:  where the examples came from (a file or the hub), for messages.
    """

    name: str
    split: str
    records: list[dict]
    labels: np.ndarray
    fields: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.records)

    def example(self, index: int) -> dict:
        """Record ``index`` with its int ``label``: what a template renders."""
        return {**self.records[index], "label": int(self.labels[index])}

    def subset(self, indices: Sequence[int] | np.ndarray, split: str | None = None) -> TextExamples:
        """The examples at ``indices`` (int), in that order, as a split called ``split`` (default: this one's)."""
        indices = np.asarray(indices, dtype=np.int64)
        return TextExamples(
            self.name, split or self.split, [self.records[i] for i in indices], self.labels[indices], self.fields, self.source
        )


def _label(value, words: Mapping[str, int], where: str) -> int:
    if isinstance(value, bool):  # JSON true/false (WiC's files)
        return int(value)
    if isinstance(value, int) and value in (-1, 0, 1):
        return value
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise UsageError(
        f"{where}: label {value!r} is not one of {', '.join(words)}, 0, 1 (or -1 for unlabeled); "
        "fix the file or convert its labels to SuperGLUE's"
    )


def read_jsonl_examples(path: str | Path, name: str, split: str) -> TextExamples:
    """Read one split of data set ``name`` (a key of :data:`TEXT_DATASETS`) from a JSONL file in SuperGLUE fields.

    Labels may be label words, JSON booleans or ints and become int64 0/1 (SuperGLUE's convention); a missing
    label is an error except in the test split, where it means unlabeled (-1). A missing file, an invalid line, a
    missing field or an unknown label value is a UsageError naming the file (and line) and the fix.
    """
    spec = TEXT_DATASETS[name]
    path = Path(path)
    wanted = ", ".join((*spec["fields"], "label"))
    if not path.is_file():
        raise UsageError(f"{name}: no {path}; pass --data-dir with {split}.jsonl holding one JSON object per line ({wanted})")
    records, labels = [], []
    text = read_utf8(path, f"pass --data-dir with a {split}.jsonl in UTF-8, one JSON object per line ({wanted})")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{where}: not a JSON object ({err.msg}); each line must be one example ({wanted})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{where}: not a JSON object; each line must be one example ({wanted})")
        missing = [key for key in spec["fields"] if key not in row]
        if "label" not in row and split != "test":
            missing.append("label")
        if missing:
            raise UsageError(f"{where}: the example has no field {', '.join(map(repr, missing))}; {name} needs {wanted}")
        labels.append(_label(row.pop("label", -1), spec["label_words"], where))
        records.append(row)
    if not records:
        raise UsageError(f"{path} holds no examples; it must hold one JSON object per line ({wanted})")
    return TextExamples(name, split, records, np.asarray(labels, dtype=np.int64), tuple(spec["fields"]), str(path))


def _from_hub(name: str, split: str) -> TextExamples:
    spec = TEXT_DATASETS[name]
    try:
        import datasets

        table = datasets.load_dataset(HUB_DATASET, name, split=_HUB_SPLITS[split])
        rows = [dict(row) for row in table]
    except Exception as err:  # offline, no such config, an old script-based copy: all mean "use local files"
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"cannot load {HUB_DATASET}/{name} ({split}) from the Hugging Face hub ({type(err).__name__}: {reason}); pass "
            f"--data-dir with local train.jsonl and val.jsonl in SuperGLUE fields ({', '.join(spec['fields'])}, label)"
        ) from None
    source = f"huggingface:{HUB_DATASET}/{name}/{_HUB_SPLITS[split]}"
    labels = [_label(row.pop("label", -1), spec["label_words"], source) for row in rows]
    return TextExamples(name, split, rows, np.asarray(labels, dtype=np.int64), tuple(spec["fields"]), source)


def load_text_examples(name: str, data_dir: str | Path | None = None, split: str = "train") -> TextExamples:
    """Split ``split`` (train, val or test) of sentence-pair data set ``name`` (rte, wic).

    From ``data_dir/<split>.jsonl`` when ``data_dir`` is given (:func:`read_jsonl_examples`), else from the Hugging
    Face hub (``datasets.load_dataset("super_glue", name)``); an unreachable hub is a UsageError asking for
    ``--data-dir``.
    """
    if name not in TEXT_DATASETS:
        raise UsageError(f"unknown text data set {name!r}: choose one of {', '.join(TEXT_DATASETS)}")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if data_dir is None:
        return _from_hub(name, split)
    return read_jsonl_examples(Path(data_dir) / f"{split}.jsonl", name, split)


def load_text_splits(name: str, data_dir: str | Path | None = None, seed: int = 0, test_frac: float = 0.5) -> dict:
    """Train, val and test examples of ``name``: split -> :class:`TextExamples`, disjoint.

    Where there is no labeled test split (SuperGLUE's test labels are hidden; RTE's files have none), the val split
    is cut in two by a permutation drawn from ``seed``: ``test_frac`` of it becomes test, the rest val.
    """
    splits = {split: load_text_examples(name, data_dir, split) for split in ("train", "val")}
    test = None
    if data_dir is None or (Path(data_dir) / "test.jsonl").is_file():
        test = load_text_examples(name, data_dir, "test")
    if test is not None and (test.labels >= 0).all():
        splits["test"] = test
        return splits
    order = np.random.default_rng([seed, 1]).permutation(len(splits["val"]))
    cut = int(round(test_frac * len(order)))
    if not 0 < cut < len(order):
        raise UsageError(f"{name}: cannot cut {len(order)} val examples into val and test with test_frac {test_frac}")
    splits["val"], splits["test"] = splits["val"].subset(np.sort(order[cut:])), splits["val"].subset(np.sort(order[:cut]), "test")
    return splits


# ---------------------------------------------------------------------------------------------------------- tasks
@dataclass
class TaskPairs:
    """The (example, task) pairs of one task in one split, m of them.

    examples:       (m,) int64, indices into the split's :class:`TextExamples` (ascending).
    inputs:         m rendered input texts.
    targets:        m rendered targets ("" for an unlabeled example).
    answer_choices: m lists of answer words, in label order.
    labels:         (m,) int64, the target's index among the answer choices (the data set's label); -1 unlabeled.
    """

    examples: np.ndarray
    inputs: list[str]
    targets: list[str]
    answer_choices: list[list[str]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class TextDataset:
    """Everything a step needs about a text data set whose tasks are instructions (the text counterpart of
    ``data.graph.GraphDataset``).

    templates:  n instructions; task j renders its examples with ``templates[j]`` and is called ``task_names[j]``.
    examples:   split -> the split's example pool (:class:`TextExamples`); pools of different splits are disjoint.
    tasks:      split -> n :class:`TaskPairs`, task j's samples of that split, rendered.
    """

    name: str
    task_names: list[str]
    templates: list[Template]
    examples: dict[str, TextExamples]
    tasks: dict[str, list[TaskPairs]]
    fingerprint: str
    options: dict
    planted_groups: list[list[int]] | None = None
    recommended: dict = field(default_factory=dict)

    domain = "text"  # which model family and step implementations apply (see data/__init__.py)

    @property
    def num_tasks(self) -> int:
        return len(self.templates)

    @property
    def num_classes(self) -> int:
        """The most answer choices any pair has (2 for RTE, WiC and the embedded default)."""
        return max(len(choices) for pairs in self.tasks["train"] for choices in pairs.answer_choices)

    def pairs(self, split: str, task: int) -> TaskPairs:
        """Task ``task``'s ``split`` samples, rendered."""
        return self.tasks[split][task]

    def task_labels(self, task: int, split: str) -> np.ndarray:
        """(len(samples),) int64 labels of task ``task``'s ``split`` samples, in :meth:`samples` order."""
        return self.pairs(split, task).labels

    def samples(self, task: int, split: str) -> np.ndarray:
        """Example indices (int64, ascending) of task ``task``'s ``split`` samples, as ``GraphDataset.samples``."""
        return self.tasks[split][task].examples


def render_pairs(template: Template, examples: TextExamples, indices: np.ndarray) -> TaskPairs:
    """Render ``examples`` at ``indices`` (m,) int64 with ``template``: the :class:`TaskPairs` of one task and split."""
    inputs, targets, choices, labels = [], [], [], []
    for index in indices:
        example = examples.example(int(index))
        text, target = template.render(example)
        answers = template.answer_choices(example)
        if not text:
            raise UsageError(f"instruction {template.name!r} renders example {index} of {examples.source} to an empty input")
        if target and target not in answers:
            raise UsageError(f"instruction {template.name!r}: target {target!r} of example {index} is not in {answers}")
        inputs.append(text)
        targets.append(target)
        choices.append(answers)
        labels.append(answers.index(target) if target else -1)
    return TaskPairs(np.asarray(indices, dtype=np.int64), inputs, targets, choices, np.asarray(labels, dtype=np.int64))


def build_text_dataset(
    name: str,
    splits: Mapping[str, TextExamples],
    templates: Sequence[Template],
    examples_per_task: int | None,
    val_per_task: int | None = None,
    test_per_task: int | None = None,
    seed: int = 0,
    planted_groups: list[list[int]] | None = None,
    options: dict | None = None,
    recommended: dict | None = None,
) -> TextDataset:
    """One task per template; task j's samples of each split are its own draw from that split's pool.

    ``splits``: split -> :class:`TextExamples` for train, val and test (disjoint pools, e.g. from
    :func:`load_text_splits`). Task j draws ``examples_per_task`` train, ``val_per_task`` val and ``test_per_task``
    test examples without replacement from a generator seeded by (seed, j) — so adding tasks leaves the others'
    samples unchanged; ``None`` takes the whole pool. Train samples must be labeled. Every sample is rendered now, so a
    template that fails on some example is refused here, by name.
    """
    missing = [split for split in SPLITS if split not in splits]
    if missing:
        raise UsageError(f"{name}: no {', '.join(missing)} examples; give train, val and test pools")
    if not templates:
        raise UsageError(f"{name}: no instructions")
    check_templates(templates, splits["train"].example(0))
    sizes = dict(train=examples_per_task, val=val_per_task, test=test_per_task)
    for split, size in sizes.items():
        if size is not None and not 0 < size <= len(splits[split]):
            raise UsageError(
                f"{name}: {size} {split} examples per task requested, but the {split} pool holds {len(splits[split])}"
            )
    tasks = {split: [] for split in SPLITS}
    for task, template in enumerate(templates):
        rng = np.random.default_rng([seed, task])
        for split in SPLITS:
            pool = len(splits[split])
            indices = np.sort(rng.choice(pool, sizes[split] or pool, replace=False))
            tasks[split].append(render_pairs(template, splits[split], indices))
        if (tasks["train"][-1].labels < 0).any():
            raise UsageError(f"{name}: instruction {template.name!r} has unlabeled training examples; train examples need labels")
    options = {**(options or {}), **{f"{split}_per_task": sizes[split] for split in SPLITS}, "split_seed": seed}
    digest = fingerprint(
        name,
        [template.name for template in templates],
        [(template.jinja, template.choices) for template in templates],
        *(splits[split].records for split in SPLITS),
        *(splits[split].labels for split in SPLITS),
        *(pairs.examples for split in SPLITS for pairs in tasks[split]),
        options,
    )
    return TextDataset(
        name=name,
        task_names=[template.name for template in templates],
        templates=list(templates),
        examples=dict(splits),
        tasks=tasks,
        fingerprint=digest,
        options=options,
        planted_groups=planted_groups,
        recommended=recommended or {},
    )
