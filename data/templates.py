"""Instructions (prompt templates) of the text tasks: promptsource's YAML files, plain JSON or JSONL lists, rendering.

In the paper's text domain each instruction of a sentence-pair data set is a task. An instruction is a Jinja template
whose rendered text holds the model's input and target separated by ``|||`` (promptsource's convention), plus
``answer_choices``: the answer words, themselves separated by ``|||``, which may be a Jinja expression of the example.
promptsource is not installable here, so its YAML files are read directly; rendering follows promptsource's
``Template.apply`` (example strings protected against ``|||``, ``answer_choices`` given to the template as a list,
each part stripped) without its prompt truncation and custom filters (RTE and WiC need neither). Templates are
rendered in a sandboxed Jinja environment with ``StrictUndefined``, so a template that names a field the example does
not have is refused, with its name, instead of rendering an empty string.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from gradtag.artifacts import UsageError, atomic_path, read_utf8

SEPARATOR = "|||"
# Stands in for a "|||" inside an example's text while rendering, so it is not taken for the input/target separator
# (promptsource's own placeholder).
_PIPE_PLACEHOLDER = "3ed2dface8203c4c9dfb1a5dc58e41e0||"
# Answer words for templates that use ``answer_choices`` without defining it, as the paper's task_templates.json does:
# promptsource's choices for these data sets (label 0 first: RTE entailment = Yes, WiC false = No).
DEFAULT_ANSWER_CHOICES = {"rte": "Yes ||| No", "wic": "No ||| Yes"}

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
_ENV.globals["zip"] = zip  # promptsource's one extra global


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def _protect(example: Mapping) -> dict:
    return {
        key: value.replace(SEPARATOR, _PIPE_PLACEHOLDER) if isinstance(value, str) else value for key, value in example.items()
    }


def _unprotect(text: str) -> str:
    return text.replace(_PIPE_PLACEHOLDER, SEPARATOR).strip()


@dataclass(frozen=True)
class Template:
    """One instruction: ``name`` (unique within a task list), ``jinja`` (input ``|||`` target), ``choices`` (the
    answer words joined by ``|||``, possibly Jinja; ``None`` if the template has none) and ``source`` (the file)."""

    name: str
    jinja: str
    choices: str | None = None
    source: str = ""

    def _render(self, source: str, example: Mapping, what: str) -> str:
        try:
            return _compile(source).render(**example)
        except jinja2.UndefinedError as err:
            raise UsageError(
                f"instruction {self.name!r} ({self.source or 'given'}): its {what} uses {err.message}; the example's fields "
                f"are {', '.join(sorted(example))}"
            ) from None
        except jinja2.TemplateError as err:
            raise UsageError(
                f"instruction {self.name!r} ({self.source or 'given'}): its {what} is not valid Jinja ({err})"
            ) from None

    def answer_choices(self, example: Mapping) -> list[str]:
        """The answer words for ``example`` (a dict of fields with ``label``), in label order; [] if there are none."""
        if self.choices is None:
            return []
        rendered = self._render(self.choices, _protect(example), "answer_choices")
        return [_unprotect(choice) for choice in rendered.split(SEPARATOR)]

    def render(self, example: Mapping) -> tuple[str, str]:
        """(input_text, target_text) of ``example``; the target is "" where the example is unlabeled (label -1)."""
        if "answer_choices" in example:
            raise UsageError(f"instruction {self.name!r}: the example has a field 'answer_choices', a name templates reserve")
        protected = _protect(example)
        protected["answer_choices"] = self.answer_choices(example)
        parts = self._render(self.jinja, protected, "text").split(SEPARATOR)
        if len(parts) != 2:
            raise UsageError(
                f"instruction {self.name!r} ({self.source or 'given'}): rendered to {len(parts)} part(s) instead of an input "
                f"and a target separated by one '{SEPARATOR}'"
            )
        return _unprotect(parts[0]), _unprotect(parts[1])


def check_template(template: Template, example: Mapping) -> None:
    """Refuse (UsageError naming the template) a template that does not render ``example`` (a dict of fields with an
    int ``label``) to a non-empty input and, for a labeled example, a target that is one of distinct answer choices."""
    choices = template.answer_choices(example)
    if not choices:
        raise UsageError(
            f"instruction {template.name!r} ({template.source or 'given'}) has no answer_choices; give them in the file or "
            "pass answer_choices (e.g. 'Yes ||| No', label 0 first)"
        )
    if len(set(choices)) != len(choices) or "" in choices:
        raise UsageError(f"instruction {template.name!r}: its answer choices {choices} must be distinct and non-empty")
    text, target = template.render(example)
    if not text:
        raise UsageError(f"instruction {template.name!r} ({template.source or 'given'}) renders an example to an empty input")
    if example.get("label", -1) != -1 and target not in choices:
        raise UsageError(f"instruction {template.name!r}: its target {target!r} is not one of its answer choices {choices}")


# ---------------------------------------------------------------------------------------------------------- readers
class PromptsourceLoader(yaml.SafeLoader):
    """A safe YAML loader that reads promptsource's ``!Template`` and ``!TemplateMetadata`` objects as plain dicts."""


def _as_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
    return loader.construct_mapping(node, deep=True)


PromptsourceLoader.add_constructor("!Template", _as_mapping)
PromptsourceLoader.add_constructor("!TemplateMetadata", _as_mapping)


def _from_yaml(path: Path, dataset: str) -> list[dict]:
    try:
        document = yaml.load(read_utf8(path, "pass a promptsource template file (UTF-8 YAML)"), Loader=PromptsourceLoader)
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("templates"), dict):
        raise UsageError(f"{path} is not a promptsource template file (no 'templates' mapping)")
    subset = document.get("subset") or document.get("dataset")
    if subset is not None and subset != dataset:
        raise UsageError(f"{path} holds the templates of {subset!r}, not of {dataset!r}; pass that data set's file")
    return list(document["templates"].values())


def _from_json(path: Path, dataset: str) -> list:
    text = read_utf8(path, "pass a UTF-8 JSON list of templates (or JSONL, one per line)")
    try:
        if path.suffix == ".jsonl":
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err})") from None
    if isinstance(entries, dict):
        if dataset not in entries:
            raise UsageError(f"{path} has no templates for {dataset!r}; its keys are {', '.join(map(str, entries))}")
        entries = entries[dataset]
    if not isinstance(entries, list):
        raise UsageError(f"{path} must hold a list of templates (or {{dataset: [...]}}), not a {type(entries).__name__}")
    return entries


def _template(entry, index: int, dataset: str, source: str, answer_choices: str | None) -> Template:
    if isinstance(entry, str):
        entry = {"jinja": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("jinja"), str):
        raise UsageError(f"{source}: template {index} must be a Jinja string or an object with a 'jinja' string")
    choices = entry.get("answer_choices")
    if choices is None:
        choices = answer_choices if answer_choices is not None else DEFAULT_ANSWER_CHOICES.get(dataset)
    return Template(name=str(entry.get("name", f"{dataset}_{index}")), jinja=entry["jinja"], choices=choices, source=source)


def load_instructions(
    path: str | Path,
    dataset: str,
    example: Mapping,
    limit: int | None = None,
    answer_choices: str | None = None,
) -> list[Template]:
    """Read the instructions of data set ``dataset`` from ``path`` and check each renders ``example``.

    ``path``: a promptsource YAML file (``*.yaml``/``*.yml``; its ``subset`` must be ``dataset``), a JSON file holding
    a list of templates or ``{dataset: [...]}`` (like the paper's ``task_templates.json``), or a JSONL file, one
    template per line. A template is a Jinja string or an object ``{"jinja": ..., "name": ..., "answer_choices": ...}``;
    an unnamed one is called ``<dataset>_<index>``. A template without answer choices gets ``answer_choices``, else
    :data:`DEFAULT_ANSWER_CHOICES` of the data set (the paper's file relies on promptsource's). ``example`` is one
    example's fields with its int ``label`` (e.g. ``TextExamples.example(0)``); every template is rendered on it and
    refused, by name, if it uses an unknown field, renders an empty input, or gives a target outside its answer
    choices (:func:`check_template`). ``limit`` keeps the first ``limit`` templates, in file order.

    Identical templates are kept, each as its own task (the paper's WiC list has 95 distinct of 100); names must be
    unique. Returns the templates in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"instructions file {path} does not exist; pass a promptsource YAML, a JSON or a JSONL file of templates"
        )
    if path.suffix in (".yaml", ".yml"):
        entries = _from_yaml(path, dataset)
    elif path.suffix in (".json", ".jsonl"):
        entries = _from_json(path, dataset)
    else:
        raise UsageError(f"instructions file {path}: expected a .yaml, .json or .jsonl file")
    if limit is not None:
        if limit < 1:
            raise UsageError(f"the number of instructions must be positive, not {limit}")
        entries = entries[:limit]
    templates = [_template(entry, index, dataset, str(path), answer_choices) for index, entry in enumerate(entries)]
    if not templates:
        raise UsageError(f"{path} holds no templates for {dataset!r}")
    check_templates(templates, example)
    return templates


def check_templates(templates: Sequence[Template], example: Mapping) -> None:
    """:func:`check_template` on each template, and refuse repeated names (a name is a task's name)."""
    names = [template.name for template in templates]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"instruction names must be unique (they name the tasks); repeated: {', '.join(repeated)}")
    for template in templates:
        check_template(template, example)


def write_instructions(path: str | Path, templates: Sequence[Template]) -> None:
    """Write templates as JSONL (``name``, ``jinja``, ``answer_choices``), readable by :func:`load_instructions`."""
    lines = [json.dumps({"name": t.name, "jinja": t.jinja, "answer_choices": t.choices}) for t in templates]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
