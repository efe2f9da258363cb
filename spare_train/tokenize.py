"""Render a record to model input and tokenise it, with step-tag positions known by construction.

One function (:func:`tokenize_records`) serves training and scoring, so a PRM scores exactly the
token layout it was trained on. The layout of one example is::

    prefix ids | step_1 ids, TAG, sep ids | step_2 ids, TAG, sep ids | …

``prefix`` is the chat template's text up to the assistant turn (or a plain-text prompt), rendered
once per distinct prompt; each step is tokenised on its own in one batched call straight to the
Rust tokenizer (:func:`encode_texts`), and the tag is inserted as a **token id**, so label
positions are known without ever searching a batch for the tag id (which the SPARE reference code
does, and which shifts labels when the tag also occurs inside a step's text). Nothing is rendered
after the last tag: the models are causal, so text there cannot change any step's score.

Because the tag is one token (an added token when the vocabulary splits it), tokenising
:func:`render_text`'s string reproduces the same ids; that is what lets exported models be scored
with plain transformers code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from spare_train.records import IGNORE, Prompt, StepRecord
from spare_train.report import DataError, Report

_SENTINEL = "\u2063SPARE_ASSISTANT_CONTENT\u2063"


@dataclass
class FormatConfig:
    """How a record becomes model input.

    Args:
        template: ``chat`` applies the tokenizer's chat template (system = instruction,
            user = context + question, assistant = steps); ``plain`` writes instruction,
            question and steps as plain text (the Math-Shepherd convention).
        step_tag: string marking the end of each step; its single token is where a step's
            score is read. The SPARE-PRM / Math-Shepherd tag is ``" ки"``.
        step_separator: text after each tag, before the next step.
        max_length: maximum tokens per example; whole trailing steps are dropped to fit.
        add_tag_token: when the tokenizer splits the tag into several tokens, add it as one new
            token (the model's embeddings then grow by one row; backbones resize them).
            False refuses such a tokenizer with an error instead.
        tag_in_text: a tag string occurring inside the prompt or a step is ``remove``d (counted
            as a repair) or the record is ``reject``ed.
    """

    template: Literal["chat", "plain"] = "chat"
    step_tag: str = " ки"
    step_separator: str = "\n"
    max_length: int = 512
    add_tag_token: bool = True
    tag_in_text: Literal["remove", "reject"] = "remove"


def format_config(value: FormatConfig | dict | None) -> FormatConfig:
    """Accept a config, its ``asdict`` form (as stored in checkpoints) or ``None`` (defaults)."""
    if value is None:
        return FormatConfig()
    return value if isinstance(value, FormatConfig) else FormatConfig(**value)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer by local path or hub id; ``tiny``/``tiny-llama``/``tiny-qwen2`` give the
    bundled tiny tokenizer. Code shipped with a tokenizer runs only on the caller's explicit
    ``trust_remote_code`` (a recipe's ``backbone.extra``), never because a folder asks for it."""
    if name_or_path.startswith("tiny"):
        from spare_train.assets import tiny_tokenizer

        return ensure_pad_token(tiny_tokenizer())
    from transformers import AutoTokenizer

    return ensure_pad_token(AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code))


def prepare_tokenizer(tokenizer: Any, cfg: FormatConfig) -> int:
    """Make sure the tag is one token and a pad token exists; return the tag's id.

    Adds the tag as a new (special) token when the vocabulary splits it and
    ``cfg.add_tag_token`` is set; callers must then resize the model's embeddings to
    ``len(tokenizer)``. Idempotent.
    """
    ids = tokenizer.encode(cfg.step_tag, add_special_tokens=False)
    if len(ids) != 1:
        if not cfg.add_tag_token:
            raise ValueError(
                f"step tag {cfg.step_tag!r} is {len(ids)} tokens {ids} for this tokenizer; it must be "
                "one token. Set add_tag_token=True to add it (the model's embeddings grow by one row) "
                "or choose a tag that is a single token."
            )
        from tokenizers import AddedToken

        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(cfg.step_tag, normalized=False)]},
            replace_extra_special_tokens=False,
        )
        ids = tokenizer.encode(cfg.step_tag, add_special_tokens=False)
        assert len(ids) == 1, ids
    ensure_pad_token(tokenizer)
    return ids[0]


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token its EOS as pad (every collator right-pads and masks
    padding out, so the choice never reaches a loss). Returns the tokenizer."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def chat_parts(prompt: Prompt, tokenizer: Any, template: str = "chat") -> tuple[str, str]:
    """The text before and after the assistant's content for ``prompt``.

    ``chat``: system = instruction (omitted when empty), user = context + question; the template is
    rendered once with a sentinel as the assistant message and split there, so the prefix ends
    exactly where the answer starts. ``plain``: instruction and question on their own lines.
    """
    if template == "plain":
        head = "\n\n".join(x for x in (prompt.instruction, prompt.user_text()) if x)
        return head + "\n", ""
    if template != "chat":
        raise ValueError(f"template must be 'chat' or 'plain', not {template!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template='chat' needs a tokenizer with a chat template; use template='plain'")
    messages = []
    if prompt.instruction:
        messages.append({"role": "system", "content": prompt.instruction})
    messages.append({"role": "user", "content": prompt.user_text()})
    messages.append({"role": "assistant", "content": _SENTINEL})
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if _SENTINEL not in text:
        raise ValueError("the chat template dropped the assistant message; use template='plain'")
    prefix, _, suffix = text.partition(_SENTINEL)
    return prefix, suffix


def chat_parts_many(prompts: list[Prompt], tokenizer: Any, template: str = "chat") -> list[tuple[str, str]]:
    """:func:`chat_parts` of each prompt, rendering each distinct prompt once.

    A data set has several candidates per question, and rendering a Jinja chat template costs
    about 0.2 ms a call: per record it took 10x longer than per prompt on GSM8K (see docs/benchmarks.md).
    """
    memo: dict[tuple[str, str, str], tuple[str, str]] = {}
    out = []
    for p in prompts:
        key = (p.question, p.instruction, p.context)
        if key not in memo:
            memo[key] = chat_parts(p, tokenizer, template)
        out.append(memo[key])
    return out


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``, the same ids, faster.

    A fast tokenizer's Rust backend is called directly (``encode_batch_fast``: no offsets), which
    skips transformers' per-text conversion to Python dicts (a third of the time for short steps).
    Falls back to the plain call for a slow tokenizer, or when the backend carries truncation,
    padding or a special-token setting that the plain call would reset first.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if (
        backend is None
        or not hasattr(backend, "encode_batch_fast")
        or backend.truncation is not None
        or backend.padding is not None
        or backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _tag_pattern(tag: str) -> re.Pattern:
    # Anywhere, not only as a whole word: an added token matches inside words too (" кино" would
    # tokenise as the tag + "но"), and every tag id in the input must be a label position.
    return re.compile(re.escape(tag))


def clean_record(record: StepRecord, cfg: FormatConfig, report: Report | None = None) -> StepRecord:
    """Remove (or reject, per ``cfg.tag_in_text``) tag strings inside the prompt or steps.

    Text that is not valid Unicode (a lone surrogate, which no tokenizer takes) is rejected
    (``invalid_unicode``). Removing a tag changes text, never a label: a strict run accepts it.
    """
    pat = _tag_pattern(cfg.step_tag)
    texts = [record.prompt.instruction, record.prompt.context, record.prompt.question, *record.steps]
    where = str(record.source) if record.source else ""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end]
        raise DataError("invalid_unicode", f"text holds {bad!a}, which is not text", where, record.id) from None
    if not any(pat.search(t) for t in texts if t):
        return record
    if cfg.tag_in_text == "reject":
        raise DataError("tag_in_text", f"the step tag {cfg.step_tag!r} occurs inside the text", where, record.id)
    if report is not None:
        report.repair("tag_in_text", where, f"the step tag {cfg.step_tag!r} removed from the text",
                      strict_ok=True, record_id=record.id)  # fmt: skip
    p = record.prompt
    from dataclasses import replace

    return replace(
        record,
        prompt=Prompt(pat.sub("", p.question), pat.sub("", p.instruction), pat.sub("", p.context)),
        steps=[pat.sub("", s) for s in record.steps],
    )


def render_text(record: StepRecord, tokenizer: Any, cfg: FormatConfig) -> str:
    """The full model input as text (what :func:`tokenize_records` tokenises, untruncated)."""
    prefix, _ = chat_parts(record.prompt, tokenizer, cfg.template)
    return prefix + "".join(s + cfg.step_tag + cfg.step_separator for s in record.steps)


def bos_ids(tokenizer: Any, template: str) -> list[int]:
    """The BOS id to put before a ``plain`` prompt when the tokenizer adds one on encode; nothing
    for ``chat`` (templates write their own BOS text). PRM examples and policy prompts both start so."""
    if template == "chat" or tokenizer.bos_token_id is None:
        return []
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return [tokenizer.bos_token_id] if ids and ids[0] == tokenizer.bos_token_id else []


def tokenize_records(
    records: list[StepRecord],
    tokenizer: Any,
    cfg: FormatConfig,
    report: Report | None = None,
    tag_id: int | None = None,
) -> list[dict[str, Any]]:
    """Tokenise records into examples (keys in docs/architecture.md), in input order.

    Records that cannot be kept (no step fits ``max_length``, a tag inside the text with
    ``tag_in_text='reject'``) are rejected into ``report`` (raised in strict mode, or when no
    report is given). Truncation is counted in ``report.notes`` (``records_truncated``,
    ``steps_truncated``). Two batched tokenizer calls do all the work: one for the prompts, one for
    all steps of all records.
    """
    if tag_id is None:
        tag_id = prepare_tokenizer(tokenizer, cfg)
    report = report if report is not None else Report(strict=True)
    cleaned: list[StepRecord] = []
    for rec in records:
        try:
            cleaned.append(clean_record(rec, cfg, report))
        except DataError as err:
            report.reject(err, stage="tokenize")
    if not cleaned:
        return []
    prefixes = [p for p, _ in chat_parts_many([r.prompt for r in cleaned], tokenizer, cfg.template)]
    unique = list(dict.fromkeys(prefixes))
    prefix_ids = dict(zip(unique, encode_texts(tokenizer, unique), strict=True))
    step_ids = encode_texts(tokenizer, [s for r in cleaned for s in r.steps])
    sep_ids = tokenizer.encode(cfg.step_separator, add_special_tokens=False) if cfg.step_separator else []
    bos = bos_ids(tokenizer, cfg.template)

    examples: list[dict[str, Any]] = []
    k = 0
    for rec, prefix in zip(cleaned, prefixes, strict=True):
        ids = bos + prefix_ids[prefix]
        positions: list[int] = []
        n = len(rec.steps)
        for j in range(n):
            piece = step_ids[k + j]
            if len(ids) + len(piece) + 1 > cfg.max_length:
                break
            ids = ids + piece
            positions.append(len(ids))
            ids = ids + [tag_id] + sep_ids[: max(0, cfg.max_length - len(ids) - 1)]
        k += n
        where = str(rec.source) if rec.source else ""
        if not positions:
            report.reject(
                DataError("too_long", f"prompt and first step exceed max_length={cfg.max_length}", where, rec.id),
                stage="tokenize",
            )
            continue
        if ids.count(tag_id) != len(positions):
            report.reject(
                DataError("tag_in_text", "the tokenizer produced the tag id inside the text", where, rec.id),
                stage="tokenize",
            )
            continue
        kept = len(positions)
        if kept < n:
            report.note("records_truncated")
            report.note("steps_truncated", n - kept)
        labels = [IGNORE if x is None else float(x) for x in rec.labels[:kept]]
        examples.append(
            {
                "id": rec.id,
                "group_id": rec.group_id,
                "input_ids": ids,
                "label_positions": positions,
                "step_labels": labels,
                "num_steps": kept,
                "num_dropped_steps": n - kept,
                "outcome": float("nan") if rec.outcome is None else float(rec.outcome),
                "answer": rec.answer or "",
                "is_reference": rec.is_reference,
            }
        )
    return examples


def features() -> Any:
    """Explicit ``datasets.Features`` for tokenised examples (labels stay float32, never bool)."""
    from datasets import Features, Sequence, Value

    return Features(
        {
            "id": Value("string"),
            "group_id": Value("string"),
            "input_ids": Sequence(Value("int64")),
            "label_positions": Sequence(Value("int64")),
            "step_labels": Sequence(Value("float32")),
            "num_steps": Value("int64"),
            "num_dropped_steps": Value("int64"),
            "outcome": Value("float32"),
            "answer": Value("string"),
            "is_reference": Value("bool"),
        }
    )


def show_example(example: dict[str, Any], tokenizer: Any) -> str:
    """Decode an example with each tag shown as ``⟨tag:label⟩`` (for reports and debugging)."""
    by_pos = dict(zip(example["label_positions"], example["step_labels"], strict=True))
    out: list[str] = []
    start = 0
    for pos in sorted(by_pos):
        out.append(tokenizer.decode(example["input_ids"][start:pos]))
        label = by_pos[pos]
        out.append(f" ⟨{'?' if label == IGNORE else f'{label:g}'}⟩")
        start = pos + 1
    out.append(tokenizer.decode(example["input_ids"][start:]))
    return "".join(out)
