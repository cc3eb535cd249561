"""Training rows for the downstream tasks that reuse lmms-eval's own tasks (``scienceqa_img``, ``flickr30k_test``).

Evaluation is lmms-eval's, unchanged; training asks with lmms-eval's own prompt functions (imported, not copied),
on a train split from another hub copy, because lmms-eval's copies hold only the evaluated split:

- ScienceQA-IMG: ``derek-thomas/ScienceQA`` (train/validation/test; the columns lmms-eval's ``sqa_*`` functions read:
  ``image``, ``question``, ``choices``, ``answer`` (int), ``hint``, ...), keeping the rows with an image.
- Flickr30k: ``nlphuji/flickr30k`` (one ``test`` split holding every image, with a ``split`` column giving the
  Karpathy split; ``image``, ``caption`` (5 strings), ``img_id``, ...), keeping ``split == "train"``; one row per
  image with its first caption.
"""

from __future__ import annotations

import functools

from forgetbench.suite.common import conversation

SCIENCEQA_TRAIN = "derek-thomas/ScienceQA"
FLICKR30K_TRAIN = "nlphuji/flickr30k"


@functools.cache
def lmms_eval_prompt_kwargs(module, yaml_name: str) -> dict:
    """``lmms_eval_specific_kwargs.default`` of one of lmms-eval's task YAMLs: the prompt settings its evaluation
    uses, read from the installed lmms-eval rather than copied."""
    from pathlib import Path

    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(str(Path(module.__file__).parent / yaml_name), mode="simple")
    return config["lmms_eval_specific_kwargs"]["default"]


def scienceqa_prompt(doc: dict) -> str:
    from lmms_eval.tasks.scienceqa import utils

    return utils.sqa_doc_to_text(doc, lmms_eval_prompt_kwargs(utils, "scienceqa_img.yaml"))


def scienceqa_example(doc: dict) -> dict:
    from lmms_eval.tasks.scienceqa.utils import sqa_doc_to_target

    return conversation([doc["image"]], scienceqa_prompt(doc), sqa_doc_to_target(doc))


def flickr30k_prompt(doc: dict) -> str:
    from lmms_eval.tasks.flickr30k.utils import flickr_doc_to_text

    return flickr_doc_to_text(doc)


def flickr30k_example(doc: dict) -> dict:
    return conversation([doc["image"]], flickr30k_prompt(doc), doc["caption"][0])


def scienceqa_rows(dataset, split: str):
    """ScienceQA-IMG is ScienceQA's questions with an image."""
    return dataset.filter(lambda image: image is not None, input_columns="image")


def flickr30k_rows(dataset, split: str):
    """nlphuji/flickr30k keeps every image in one split; its ``split`` column holds the Karpathy split.

    >>> import datasets
    >>> rows = datasets.Dataset.from_dict({"split": ["train", "val", "test"], "img_id": ["a", "b", "c"]})
    >>> list(flickr30k_rows(rows, "validation")["img_id"])
    ['b']
    """
    karpathy = {"validation": "val"}.get(split, split)
    return dataset.filter(lambda name: name == karpathy, input_columns="split")
