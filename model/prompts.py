"""Prompt templates: the one definition used to prepare training data and to prompt a model.

    from .prompts import apply_template, prompt_of
    prompt_of({"instruction": "Give three tips.", "input": ""})   # the Alpaca training prompt
    apply_template("alpaca", "Give three tips.")                 # the same text for inference

A template's name is recorded with the data (summary.json), the job (data.template in job.yaml
and the job record) and the merged checkpoint (the `data:` section of its .yaml), so that
inference sends prompts in the shape the model was trained on. "" means no template (raw text).
"""

from __future__ import annotations

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATES = ("alpaca",)  # names data.template may take ("" = none)


def prompt_of(rec: dict[str, str]) -> str:
    """The Alpaca prompt for one record (with-input variant only when `input` is non-empty)."""
    if rec.get("input", ""):
        return PROMPT_WITH_INPUT.format(instruction=rec["instruction"], input=rec["input"])
    return PROMPT_NO_INPUT.format(instruction=rec["instruction"])



def apply_template(template: str, text: str) -> str:
    """`text` as the instruction of `template` ("" or "raw": `text` unchanged).

    Raises:
        ValueError: an unknown template name (naming the known ones).
    """
    if template in ("", "raw"):
        return text
    if template == "alpaca":
        return prompt_of({"instruction": text, "input": ""})
    raise ValueError(f"unknown prompt template {template!r} (known: {', '.join(TEMPLATES)}, "
                     "or '' for none)")
