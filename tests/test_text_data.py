"""Text data: SuperGLUE-style JSONL loaders, promptsource YAML and JSON instructions, per-instruction task splits,
and the embedded text default's planted groups. No model and no download."""

import itertools
import json
import sys
import types

import numpy as np
import pytest

from data import read_planted_groups
from data.templates import Template, check_template, load_instructions
from data.text import TextExamples, build_text_dataset, load_text_examples, load_text_splits, read_jsonl_examples
from data.text_planted import generate_text_default, load_text_default
from gradtag.artifacts import UsageError
from tests.conftest import SHARED_DATA

INSTRUCTIONS = SHARED_DATA / "instructions"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"optional real data {SHARED_DATA} is absent")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


RTE_ROWS = [
    {"premise": "A cat sat on the mat.", "hypothesis": "A cat sat.", "label": "entailment", "idx": 0},
    {"premise": "It rained all day.", "hypothesis": "It was sunny.", "label": "not_entailment", "idx": 1},
    {"premise": "Ann ran home.", "hypothesis": "Ann moved.", "label": 0, "idx": 2},
    {"premise": "Bo slept.", "hypothesis": "Bo danced.", "label": 1, "idx": 3},
]


def test_jsonl_loader_normalises_string_bool_and_int_labels(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", RTE_ROWS)
    examples = load_text_examples("rte", tmp_path, "train")
    assert examples.labels.dtype == np.int64 and examples.labels.tolist() == [0, 1, 0, 1]
    assert examples.fields == ("premise", "hypothesis")
    assert examples.example(1) == {"premise": "It rained all day.", "hypothesis": "It was sunny.", "idx": 1, "label": 1}
    wic = [
        {"word": "go", "sentence1": "Go on.", "sentence2": "Go away.", "label": flag}
        for flag in (False, True, "true", "False", 1)
    ]
    assert read_jsonl_examples(write_jsonl(tmp_path / "wic.jsonl", wic), "wic", "train").labels.tolist() == [0, 1, 1, 0, 1]


def test_jsonl_loader_refuses_missing_field_label_and_file(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [RTE_ROWS[0], {"premise": "No hypothesis here.", "label": 0}])
    with pytest.raises(UsageError, match=rf"{path}:2: .*'hypothesis'"):
        load_text_examples("rte", tmp_path, "train")
    write_jsonl(path, [{**RTE_ROWS[0], "label": "maybe"}])
    with pytest.raises(UsageError, match=rf"{path}:1: label 'maybe'"):
        load_text_examples("rte", tmp_path, "train")
    with pytest.raises(UsageError, match="val.jsonl.*--data-dir"):
        load_text_examples("rte", tmp_path, "val")


def test_text_files_that_are_not_utf8_are_one_line_naming_file_and_line(tmp_path):
    """A Latin-1 byte in an examples or instructions file was a UnicodeDecodeError traceback."""
    path = write_jsonl(tmp_path / "train.jsonl", RTE_ROWS[:2])
    path.write_bytes(path.read_bytes() + b'{"premise": "caf\xe9"}\n')
    with pytest.raises(UsageError, match=rf"{path}:3: holds bytes that are not UTF-8 text; pass --data-dir"):
        load_text_examples("rte", tmp_path, "train")
    for name in ("templates.json", "templates.yaml"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
        with pytest.raises(UsageError, match=rf"{tmp_path / name}:1: holds bytes that are not UTF-8 text; pass a"):
            load_instructions(tmp_path / name, "rte", EXAMPLE)


def test_unreachable_hub_asks_for_data_dir(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'super_glue' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UsageError, match="--data-dir"):
        load_text_examples("rte")


def test_val_is_halved_into_val_and_test_without_a_test_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", RTE_ROWS)
    write_jsonl(tmp_path / "val.jsonl", RTE_ROWS * 3)
    splits = load_text_splits("rte", tmp_path, seed=0)
    assert [len(splits[split]) for split in ("train", "val", "test")] == [4, 6, 6]
    assert splits["test"].split == "test"


@needs_shared
@pytest.mark.parametrize("name, sizes", [("rte", (2490, 277, 0)), ("wic", (5428, 638, 1400))])
def test_real_superglue_files_load_with_documented_counts(name, sizes):
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
        if size:
            examples = load_text_examples(name, SHARED_DATA / name, split)
            assert len(examples) == size and set(np.unique(examples.labels)) == {0, 1}
    splits = load_text_splits(name, SHARED_DATA / name)  # RTE has no test file: its val is halved
    assert len(splits["val"]) + len(splits["test"]) == sizes[1] + sizes[2]


@needs_shared
@pytest.mark.parametrize("name", ["rte", "wic"])
def test_promptsource_yaml_gives_ten_templates_that_render(name):
    example = load_text_examples(name, SHARED_DATA / name, "train").example(0)
    templates = load_instructions(INSTRUCTIONS / f"promptsource_super_glue_{name}.yaml", name, example)
    assert len(templates) == 10 and len({template.name for template in templates}) == 10
    for template in templates:
        text, target = template.render(example)
        assert text and "|||" not in text
        assert target == template.answer_choices(example)[example["label"]]


@needs_shared
@pytest.mark.parametrize("name, distinct", [("rte", 100), ("wic", 95)])
def test_paper_templates_give_hundred_per_dataset_and_render(name, distinct):
    example = load_text_examples(name, SHARED_DATA / name, "train").example(0)
    templates = load_instructions(INSTRUCTIONS / "paper_task_templates.json", name, example)
    assert len(templates) == 100 and len({template.jinja for template in templates}) == distinct
    for template in templates:
        text, target = template.render(example)
        assert text and target == template.answer_choices(example)[example["label"]]
    assert len(load_instructions(INSTRUCTIONS / "paper_task_templates.json", name, example, limit=7)) == 7


EXAMPLE = {"premise": "A cat sat.", "hypothesis": "A cat.", "label": 0}


def test_template_with_unknown_field_or_empty_input_is_refused_by_name(tmp_path):
    unknown = Template("asks for a context", "{{ context }} ||| {{ answer_choices[label] }}", "Yes ||| No")
    with pytest.raises(UsageError, match="'asks for a context'.*context"):
        check_template(unknown, EXAMPLE)
    empty = Template("says nothing", "{% if false %}{{ premise }}{% endif %} ||| {{ answer_choices[label] }}", "Yes ||| No")
    with pytest.raises(UsageError, match="'says nothing'.*empty input"):
        check_template(empty, EXAMPLE)
    path = write_jsonl(
        tmp_path / "templates.jsonl",
        [
            {"name": "fine", "jinja": "{{premise}} {{hypothesis}}? ||| {{answer_choices[label]}}"},
            {"name": unknown.name, "jinja": unknown.jinja},
        ],
    )
    with pytest.raises(UsageError, match="'asks for a context'"):
        load_instructions(path, "rte", EXAMPLE)
    assert [template.name for template in load_instructions(path, "rte", EXAMPLE, limit=1)] == ["fine"]


def test_template_lists_and_answer_choices(tmp_path):
    jinja = "{{premise}} Does it follow that {{hypothesis}}? ||| {{answer_choices[label]}}"
    path = tmp_path / "plain.json"
    path.write_text(json.dumps([jinja, {"name": "own", "jinja": jinja, "answer_choices": "{{ 'Y' }} ||| N"}]))
    plain, own = load_instructions(path, "rte", EXAMPLE)
    assert plain.name == "rte_0" and plain.answer_choices(EXAMPLE) == ["Yes", "No"]  # the data set's default choices
    assert own.render(EXAMPLE) == ("A cat sat. Does it follow that A cat.?", "Y")
    piped = {**EXAMPLE, "premise": "a ||| b"}  # a separator inside the example's text is not a separator
    assert plain.render(piped)[0].startswith("a ||| b Does")
    (tmp_path / "keyed.json").write_text(json.dumps({"wic": [jinja]}))
    with pytest.raises(UsageError, match="no templates for 'rte'"):
        load_instructions(tmp_path / "keyed.json", "rte", EXAMPLE)


def tiny_pools() -> dict:
    rows = [{"premise": f"Premise {i}.", "hypothesis": f"Hypothesis {i}."} for i in range(60)]
    labels = np.arange(60, dtype=np.int64) % 2
    pool = TextExamples("rte", "train", rows, labels, ("premise", "hypothesis"), "memory")
    return {"train": pool.subset(range(30)), "val": pool.subset(range(30, 45), "val"), "test": pool.subset(range(45, 60), "test")}


def test_per_instruction_splits_are_seeded_and_rendered():
    templates = [
        Template("plain", "{{premise}} {{hypothesis}} ||| {{answer_choices[label]}}", "Yes ||| No"),
        Template("flipped", "{{hypothesis}} given {{premise}}? ||| {{answer_choices[label]}}", "True ||| False"),
    ]
    dataset = build_text_dataset("rte", tiny_pools(), templates, examples_per_task=10, val_per_task=5, seed=3)
    again = build_text_dataset("rte", tiny_pools(), templates, examples_per_task=10, val_per_task=5, seed=3)
    assert dataset.fingerprint == again.fingerprint and dataset.num_tasks == 2 and dataset.num_classes == 2
    train = dataset.pairs("train", 1)
    assert len(train) == 10 and len(dataset.pairs("val", 1)) == 5 and len(dataset.pairs("test", 1)) == 15  # None: all
    assert not np.array_equal(dataset.samples(0, "train"), dataset.samples(1, "train"))  # each task its own draw
    assert train.labels.tolist() == (train.examples % 2).tolist()  # the data set's label
    assert train.targets == [["True", "False"][label] for label in train.labels]
    with pytest.raises(UsageError, match="31 train examples per task"):
        build_text_dataset("rte", tiny_pools(), templates, examples_per_task=31)


def test_text_default_is_deterministic_with_planted_groups_and_disjoint_splits(tmp_path):
    first = load_text_default(seed=1, num_instructions=8, num_groups=4, data_dir=tmp_path)
    second = load_text_default(seed=1, num_instructions=8, num_groups=4)
    other = load_text_default(seed=2, num_instructions=8, num_groups=4)
    assert first.fingerprint == second.fingerprint != other.fingerprint
    assert first.pairs("train", 5).inputs == second.pairs("train", 5).inputs
    assert first.planted_groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert read_planted_groups(tmp_path / "planted_groups.txt", first.num_tasks) == first.planted_groups
    assert len({template.jinja for template in first.templates}) == first.num_tasks
    for task in range(first.num_tasks):
        texts = {
            split: {
                tuple(first.examples[split].records[i][field] for field in first.examples[split].fields)
                for i in first.samples(task, split)
            }
            for split in ("train", "val", "test")
        }
        assert not (texts["train"] & texts["val"] or texts["train"] & texts["test"] or texts["val"] & texts["test"])
        labels = first.pairs("train", task).labels
        assert len(labels) == 40 and set(labels.tolist()) == {0, 1}
    # same-group tasks share their rule: on a common example they give the same label; groups ask different things
    splits, templates, groups = generate_text_default(seed=1, num_instructions=8, num_groups=4)
    example = splits["train"].example(0)
    answers = [templates[task].answer_choices(example).index(templates[task].render(example)[1]) for task in range(8)]
    assert all(answers[a] == answers[b] for a, b in groups)
    with pytest.raises(UsageError, match="multiple"):
        load_text_default(num_instructions=10, num_groups=4)


@pytest.mark.parametrize("rule", ["polarity", "match", "kind"])
def test_every_rule_gives_one_rule_per_group_and_balanced_labels(rule):
    splits, templates, groups = generate_text_default(seed=0, num_instructions=8, num_groups=4, rule=rule)
    examples = [splits["train"].example(i) for i in range(200)]
    answers = np.array(
        [[templates[task].answer_choices(ex).index(templates[task].render(ex)[1]) for ex in examples] for task in range(8)]
    )
    for members in groups:  # same group: the same label on every example
        assert all((answers[task] == answers[members[0]]).all() for task in members)
    firsts = [members[0] for members in groups]  # different groups: different questions (labels agree ~half the time)
    for a, b in itertools.combinations(firsts, 2):
        assert 0.3 < (answers[a] == answers[b]).mean() < 0.7
    assert 0.4 < answers.mean() < 0.6


def test_polarity_complement_groups_flip_the_label():
    splits, templates, groups = generate_text_default(seed=0, num_instructions=8, num_groups=8)
    example = splits["train"].example(0)
    answers = [templates[task].answer_choices(example).index(templates[task].render(example)[1]) for task in range(8)]
    assert [answers[g] + answers[g + 4] for g in range(4)] == [1, 1, 1, 1]  # group g + 4 asks the complement of g
