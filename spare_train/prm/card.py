"""The model card (``README.md``) of an exported PRM, with a snippet that runs as copied.

The snippet builds the input text the way training did (:func:`spare_train.tokenize.chat_parts`:
chat template or plain prompt, each step followed by the tag and the separator), loads the model
with plain transformers (or peft, for an adapter) as the head says (:meth:`PRMHead.snippet`), and
prints one P(correct) per step of a concrete example.
"""

from __future__ import annotations

from typing import Any

from spare_train.prm.heads import get_head

#: the example the card's snippet scores
EXAMPLE = {
    "instruction": "Solve the problem step by step.",
    "question": "Tom has 3 boxes of 4 apples and eats 2 apples. How many apples are left?",
    "steps": ["3 * 4 = 12", "12 - 2 = 10", "The answer is 10."],
}


def input_text_lines(info: dict[str, Any]) -> list[str]:
    """Python lines that set ``text`` from ``instruction``, ``question`` and ``steps``."""
    fmt = info["format"]
    lines = [f"steps_text = \"\".join(step + {fmt['step_tag']!r} + {fmt['step_separator']!r} for step in steps)"]
    if fmt["template"] == "chat":
        lines += [
            'messages = ([{"role": "system", "content": instruction}] if instruction else []) + [',
            '    {"role": "user", "content": question}, {"role": "assistant", "content": steps_text}]',
            "text = tok.apply_chat_template(messages, tokenize=False)",
        ]
    else:
        lines.append('text = "\\n\\n".join(x for x in (instruction, question) if x) + "\\n" + steps_text')
    return lines


def base_line(info: dict[str, Any], path: str) -> str:
    """``BASE = …`` for an adapter's snippet: the base as plain transformers loads it here."""
    from spare_train.models.hf import resolve_base

    recorded = info["base_model"]
    resolved = resolve_base(path, recorded)
    if resolved == recorded:
        return f"BASE = {recorded!r}  # the base model (adapter_config.json: base_model_name_or_path)"
    how = ("spare-train's bundled test model; elsewhere: spare_train.assets.resolve_model_name"
           if recorded.startswith("tiny-") else "recorded relative to this folder")  # fmt: skip
    return f"BASE = {resolved!r}  # {recorded!r} on this machine ({how})"


def snippet(info: dict[str, Any], path: str) -> str:
    """A self-contained script that scores :data:`EXAMPLE` with the PRM in ``path``."""
    load, probs = get_head(info["head"]).snippet(info)
    special = info["format"]["template"] == "plain"  # chat templates write their own BOS
    lines = [
        "import torch",
        *[line for line in load if line.startswith(("from ", "import "))],
        "",
        f"PATH = {path!r}  # the folder this card is in",
        *([base_line(info, path)] if info["adapter"] else []),
        *[line for line in load if not line.startswith(("from ", "import "))],
        "",
        f"instruction = {EXAMPLE['instruction']!r}",
        f"question = {EXAMPLE['question']!r}",
        f"steps = {EXAMPLE['steps']!r}",
        *input_text_lines(info),
        f'ids = tok(text, return_tensors="pt", add_special_tokens={special}).input_ids',
        "with torch.no_grad():",
        f"    {probs}",
        f"step_scores = probs[ids[0] == {info['tag_id']}].tolist()  # one score per step, in order",
        "print(step_scores)",
    ]
    return "\n".join(lines)


def model_card(info: dict[str, Any], path: str) -> str:
    """README.md of an exported PRM."""
    fmt = info["format"]
    if info["head"] == "lm_tokens":
        head = (f"LM-token head: the causal LM's logits of {info['label_tokens'][0]!r} (incorrect) and "
                f"{info['label_tokens'][1]!r} (correct) at each tag token (ids {info['label_token_ids']})")  # fmt: skip
    else:
        head = f"{info['classifier_type']} token-classification head (labels 0 = incorrect, 1 = correct) at each tag token"
    kind = f"a PEFT adapter on `{info['base_model']}`" if info["adapter"] else "full (merged) weights"
    meta = f"base_model: {info['base_model']}\n" if info["adapter"] else ""
    return f"""---
library_name: {"peft" if info["adapter"] else "transformers"}
{meta}tags: [process-reward-model, prm, spare-train]
---
# Process reward model (spare-train)

Scores each step of a step-by-step solution with P(step is correct). Weights: {kind}.

* **Head:** {head}; a step's score is the softmax probability of *correct* over the two logits.
* **Step tag:** `{fmt["step_tag"]!r}` (token id {info["tag_id"]}), written after every step, followed by `{fmt["step_separator"]!r}`.
* **Prompt format:** `{fmt["template"]}` (max {fmt["max_length"]} tokens; whole trailing steps beyond it were dropped in training).

Text after the last tag does not change any score (the model is causal).

## Scoring with plain transformers

Runs as copied (from the folder that holds this one) and prints one score per step:

```python
{snippet(info, path)}
```

{ADAPTER_NOTE if info["adapter"] else ""}With spare-train installed: `spare_train.load_prm(PATH).score(records)` or
`spare-train score --model PATH --input FILE --output scores.jsonl`.
"""


#: how plain peft users load an adapter export (the card's snippet does exactly this)
ADAPTER_NOTE = """`adapter_config.json` names the base model portably: a hub id or spare-train's bundled `tiny-*`
name as it is, a local folder relative to this one. `peft.AutoPeftModel*` reads that name as a hub
id or a path from the current folder, so load the base yourself (`BASE` above) and apply the
adapter with `PeftModel.from_pretrained(base, PATH)`; spare-train's loaders resolve it for you.

"""
