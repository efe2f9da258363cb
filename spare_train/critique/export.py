"""A critic or refiner checkpoint as a causal LM with a model card that gives its exact prompt.

``spare-train export`` writes a :class:`~spare_train.policy.PolicyModule` checkpoint trained on
:class:`~spare_train.critique.CritiqueDataModule` data like any policy (merged weights or a peft
adapter, plus the tokenizer) and adds ``spare_critic.json`` (mode, template, prompt format: what
:func:`spare_train.critique.generate.load_critic` reads) and a ``README.md`` whose snippet builds
the prompt exactly as training did and generates with plain transformers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from spare_train.critique.data import STATE_KEY
from spare_train.critique.generate import INFO_NAME
from spare_train.critique.template import Critique, CritiqueTemplate, StepCritique
from spare_train.models.hf import portable_base
from spare_train.records import Prompt

#: the example the card renders and its snippet runs
EXAMPLE = {
    "instruction": "Solve the problem step by step.",
    "question": "Tom has 3 boxes of 4 apples and eats 2 apples. How many apples are left?",
    "steps": ["3 * 4 = 12", "12 - 2 = 9", "The answer is 9."],
    "critique": [("Correctly computes 3 * 4 = 12.", True), ("Incorrectly computes 12 - 2: it is 10, not 9.", False), ("Carries the earlier error.", False)],
}


def critique_state(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The critique settings a :class:`CritiqueDataModule` stored in ``ckpt`` (None: a plain policy)."""
    return next((v[STATE_KEY] for v in ckpt.values() if isinstance(v, dict) and STATE_KEY in v), None)


def example_prompt(template: CritiqueTemplate, mode: str) -> Prompt:
    prompt = Prompt(EXAMPLE["question"], EXAMPLE["instruction"])
    if mode == "critique":
        return template.prompt(prompt, EXAMPLE["steps"])
    critique = Critique(tuple(StepCritique(e, ok) for e, ok in EXAMPLE["critique"]))
    return template.refine_prompt(prompt, EXAMPLE["steps"], critique)


def snippet(info: dict[str, Any], path: str) -> str:
    """A script that runs as copied: builds :data:`EXAMPLE`'s prompt as training did, generates greedily."""
    template = CritiqueTemplate(**info["template"])
    model_cls = "from peft import AutoPeftModelForCausalLM as Model" if info["adapter"] else "from transformers import AutoModelForCausalLM as Model"
    user = example_prompt(template, info["mode"]).question
    lines = [
        model_cls,
        "from transformers import AutoTokenizer",
        "",
        f"PATH = {path!r}  # the folder this card is in",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "model = Model.from_pretrained(PATH).eval()",
        "",
        f"instruction = {EXAMPLE['instruction']!r}",
        f"user = {user!r}  # see 'Prompt' above for how it is assembled",
    ]
    if info["prompt_format"]["template"] == "chat":
        lines += [
            'messages = ([{"role": "system", "content": instruction}] if instruction else []) + [',
            '    {"role": "user", "content": user}, {"role": "assistant", "content": "\\u2063"}]',
            'text = tok.apply_chat_template(messages, tokenize=False).split("\\u2063")[0]  # up to the answer',
            'ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids',
        ]
    else:
        lines += [
            'text = "\\n\\n".join(x for x in (instruction, user) if x) + "\\n"',
            'ids = tok(text, return_tensors="pt").input_ids',
        ]
    lines += [
        "out = model.generate(ids, max_new_tokens=512, do_sample=False, eos_token_id=tok.eos_token_id,",
        "                     pad_token_id=tok.pad_token_id or tok.eos_token_id)",
        "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
    ]
    return "\n".join(lines)


def model_card(info: dict[str, Any], path: str, prompt_text: str) -> str:
    """README.md of an exported critic or refiner; ``prompt_text`` is the example's exact model input."""
    t = CritiqueTemplate(**info["template"])
    critic = info["mode"] == "critique"
    kind = f"a PEFT adapter on `{info['base_model']}`" if info["adapter"] else "full (merged) weights"
    meta = f"base_model: {info['base_model']}\n" if info["adapter"] else ""
    example_out = t.render(Critique(tuple(StepCritique(e, ok) for e, ok in EXAMPLE["critique"])))
    if critic:
        what = ("Writes a step-by-step critique of a candidate solution: one line per step with an explanation "
                "and a verdict, then a conclusion naming the first incorrect step.")  # fmt: skip
        user = f"{{question}}\n\nSolution:\n{{numbered steps}}\n\n{t.instruction}"
        answer = (f"One line per step, `{t.step_prefix}<explanation> Verdict: correct.` or `... Verdict: incorrect.`, "
                  f"then `{t.conclusion_error}` (k: the first incorrect step) or `{t.conclusion_correct}`. For the "
                  f"example:\n\n```text\n{example_out}\n```")  # fmt: skip
    else:
        what = "Rewrites an incorrect solution into a correct one, guided by a step-by-step critique of it."
        user = f"{{question}}\n\nSolution:\n{{numbered steps}}\n\nCritique:\n{{critique}}\n\n{t.refine_instruction}"
        answer = "A solution, one step a line."
    return f"""---
library_name: {"peft" if info["adapter"] else "transformers"}
{meta}tags: [critique-model, {"critic" if critic else "refiner"}, spare-train]
---
# {"Critique model" if critic else "Critique-guided refinement model"} (spare-train)

{what} Weights: {kind}. Trained by supervised fine-tuning on step-annotated solutions (AutoMathCritique,
arXiv 2411.16579), loss on the answer tokens only.

## Prompt

* **System message:** the task's instruction (here `{EXAMPLE["instruction"]}`); left out when empty.
* **User message** (numbered steps: `{t.step_prefix.format(k="k")}<step>`, one a line, after any preamble):

```text
{user}
```

* **Prompt format:** `{info["prompt_format"]["template"]}` ({"the tokenizer's chat template, up to the assistant's answer" if info["prompt_format"]["template"] == "chat" else "instruction, blank line, user message, newline"}); max {info["prompt_format"]["max_length"]} tokens in training.
* **Answer:** {answer}

The exact model input for the example, special tokens included:

```text
{prompt_text}
```

## Generating with plain transformers

Runs as copied (from the folder that holds this one):

```python
{snippet(info, path)}
```

With spare-train installed: `spare-train critique --model PATH --input FILE --output critiques.jsonl`
(strict parsing, per-step verdicts and P("correct") at each verdict token) and
`spare-train evaluate --model PATH --data FILE` (step AUROC, first-error F1, best-of-N from those
probabilities).
"""


def export_critic(module: Any, out: str | Path, state: dict[str, Any], merge: bool = True) -> Path:
    """Write a critic or refiner: the policy folder plus ``spare_critic.json`` and the model card."""
    from spare_train.data.policy import Turn, tokenize_turns
    from spare_train.policy.export import export_policy
    from spare_train.tokenize import load_tokenizer

    out = Path(export_policy(module, out, merge=merge))
    adapter = (out / "adapter_config.json").is_file()
    info = {"mode": state["mode"], "template": state["template"], "prompt_format": asdict(module.format_config),
            "adapter": adapter, "base_model": portable_base(module.backbone_cfg.name_or_path, out)}  # fmt: skip
    (out / INFO_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    tok = load_tokenizer(module.tokenizer_name)
    prompt = example_prompt(CritiqueTemplate(**state["template"]), state["mode"])
    ids = tokenize_turns([Turn(prompt, "")], tok, module.format_config.template)[0][0]
    (out / "README.md").write_text(model_card(info, str(out), tok.decode(ids)))
    return out
