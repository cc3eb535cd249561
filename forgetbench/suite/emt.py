"""EMT's classification-as-QA (Zhai et al., 2023, arXiv 2309.10313): MNIST, CIFAR-10, CIFAR-100, miniImageNet.

The prompt lists the label set, as EMT asked it. An offline judge (:func:`forgetbench.suite.scoring.judge_label`)
sorts every answer into correct, a wrong label of the set, several labels, or outside the set (hallucination); the
task reports accuracy and the rate of each failure. The ``_closed`` variants score the label set by likelihood
(``--model forgetbench``).

Optional model judge, off by default and never used by the tests: set ``FORGETBENCH_EMT_JUDGE_URL`` (an
OpenAI-compatible ``/v1`` base URL), ``FORGETBENCH_EMT_JUDGE_MODEL`` and, if the endpoint needs one,
``FORGETBENCH_EMT_JUDGE_API_KEY``. It is asked only about answers the offline judge found outside the label set
(an unlisted synonym, say), and may move them to another kind; its verdict is logged as ``judge``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from forgetbench.suite import labels, scoring
from forgetbench.suite.classify import LabelSet, hooks
from forgetbench.suite.common import conversation, first


@dataclass(frozen=True)
class EMTDataset:
    key: str
    hub_id: str  # the copy the task YAML loads
    image_column: str
    label_column: str
    raw_labels: tuple[str, ...]  # ClassLabel names, in index order
    noun: str  # "digit" or "object"

    @property
    def labels(self) -> tuple[str, ...]:
        """The label set the prompt shows and the judge matches against."""
        return tuple(labels.display_name(name) for name in self.raw_labels)

    @property
    def synonyms(self) -> dict[str, tuple[str, ...]]:
        return labels.SYNONYMS[self.key]

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(self.key, self.labels, self.noun, synonyms=self.synonyms)

    @property
    def question(self) -> str:
        """EMT's question (the shared classification-as-QA one).

        >>> DATASETS["mnist"].question
        'What is the digit in the image? Please only answer a single digit in 0, 1, 2, 3, 4, 5, 6, 7, 8, 9.'
        """
        return self.label_set.question


DATASETS = {
    d.key: d
    for d in (
        EMTDataset("mnist", "ylecun/mnist", "image", "label", labels.MNIST, "digit"),
        EMTDataset("cifar10", "uoft-cs/cifar10", "img", "label", labels.CIFAR10, "object"),
        EMTDataset("cifar100", "uoft-cs/cifar100", "img", "fine_label", labels.CIFAR100, "object"),
        EMTDataset("miniimagenet", "timm/mini-imagenet", "image", "label",
                   tuple(wnid for wnid, _, _ in labels.MINI_IMAGENET), "object"),
    )
}


def _processor(key: str):
    spec = DATASETS[key]

    def process_docs(dataset):
        """Adds ``emt`` (which label set) and ``answer`` (the shown label name); renames the image column to
        ``image``. Reads the names from the dataset's own ClassLabel, so a copy ordering its classes differently
        still gets the right names."""
        feature = dataset.features.get(spec.label_column)
        if feature is None or not hasattr(feature, "int2str"):
            raise ValueError(f"EMT {key}: column {spec.label_column!r} is missing or not a ClassLabel "
                             f"(columns: {', '.join(dataset.column_names)})")
        names = [labels.display_name(feature.int2str(i)) for i in dataset[spec.label_column]]
        unknown = sorted(set(names) - set(spec.labels))
        if unknown:
            raise ValueError(f"EMT {key}: labels outside the {key} label set: {', '.join(unknown[:5])}")
        if spec.image_column != "image":
            dataset = dataset.rename_column(spec.image_column, "image")
        return dataset.add_column("emt", [key] * len(names)).add_column("answer", names)

    process_docs.__name__ = f"process_docs_{key}"
    return process_docs


process_docs_mnist = _processor("mnist")
process_docs_cifar10 = _processor("cifar10")
process_docs_cifar100 = _processor("cifar100")
process_docs_miniimagenet = _processor("miniimagenet")


_hooks = hooks({key: spec.label_set for key, spec in DATASETS.items()}, "emt")
prompt = _hooks.prompt


def to_sft_example(doc: dict) -> dict:
    return conversation([doc["image"]], prompt(doc), doc["answer"])


def judge(answer: str, doc: dict) -> dict:
    """The judgement of one answer: ``kind`` (one of scoring.JUDGEMENTS), plus ``judge`` when a model judge
    was asked."""
    spec = DATASETS[doc["emt"]]
    kind = scoring.judge_label(answer, doc["answer"], spec.labels, spec.synonyms)
    if kind == scoring.HALLUCINATION and answer.strip() and os.environ.get("FORGETBENCH_EMT_JUDGE_URL"):
        verdict = model_judge(answer, spec.labels)
        kind = scoring.judge_label(verdict, doc["answer"], spec.labels) if verdict != "NONE" else kind
        return {"kind": kind, "judge": verdict}
    return {"kind": kind}


def model_judge(answer: str, label_set: tuple[str, ...]) -> str:
    """Ask an OpenAI-compatible endpoint which labels of the set an answer names. Returns the labels it lists
    (comma-separated) or NONE."""
    from openai import OpenAI

    client = OpenAI(base_url=os.environ["FORGETBENCH_EMT_JUDGE_URL"],
                    api_key=os.environ.get("FORGETBENCH_EMT_JUDGE_API_KEY", "none"))
    question = (f"Label set: {', '.join(label_set)}.\nAnswer: {answer!r}\nWhich labels of the set does the answer "
                "name (synonyms count)? Reply with those labels, comma-separated, exactly as written in the set, "
                "or NONE.")
    reply = client.chat.completions.create(
        model=os.environ.get("FORGETBENCH_EMT_JUDGE_MODEL", "gpt-4o-mini"), temperature=0, max_tokens=64,
        messages=[{"role": "user", "content": question}],
    )
    return (reply.choices[0].message.content or "NONE").strip()


# lmms-eval hooks (tasks/emt/): the shared classification-as-QA ones.
doc_to_visual, doc_to_text, doc_to_target = _hooks.doc_to_visual, _hooks.doc_to_text, _hooks.doc_to_target
doc_to_choice, doc_to_target_index = _hooks.doc_to_choice, _hooks.doc_to_target_index


def process_results(doc: dict, results: list) -> dict:
    """Accuracy and the three failure rates (each a 0/1 per answer, averaged), and the judgement itself."""
    verdict = judge(first(results), doc)
    rates = {f"{kind}_rate": float(verdict["kind"] == kind) for kind in scoring.JUDGEMENTS[1:]}
    return {"accuracy": float(verdict["kind"] == scoring.CORRECT), **rates, "judgement": verdict}
