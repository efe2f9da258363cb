"""``CritiqueDataModule``: critique SFT and refinement SFT data on the policy data path.

It is a :class:`~spare_train.data.PolicyDataModule` whose examples are single completions (the
``filtered`` view's shape, so the policy module's plain ``SFT`` objective trains on them with
the loss on the target tokens only) built by :mod:`spare_train.critique.views`:

* ``mode: critique``: prompt = the task's instruction + question + numbered steps + the fixed
  critique instruction; target = the critique (:class:`~spare_train.critique.template.CritiqueTemplate`).
* ``mode: refine``: prompt = question + an incorrect candidate + its critique + the refinement
  instruction; target = a correct solution of the same question.

The checkpoint records the mode and the template (``state_dict``), so ``spare-train export``
writes a critic or refiner folder whose model card shows the exact prompt.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Literal

from spare_train.critique.template import CritiqueTemplate
from spare_train.critique.views import RefineTarget, Unlabeled, critique_records, refinement_examples
from spare_train.data.policy import PolicyDataModule, Turn, response_text
from spare_train.labels import PolicySpec
from spare_train.records import CORRECT, StepRecord

#: where the checkpoint keeps what the export needs (see :meth:`CritiqueDataModule.state_dict`)
STATE_KEY = "spare_critique"


class CritiqueDataModule(PolicyDataModule):
    """Critique or refinement examples from step-annotated records, for SFT of a critic or refiner.

    Args:
        train: training files (file, folder of shards, glob, ``hf:NAME[:split]``, or a list).
        val: validation files; when absent, ``val_fraction`` of the training questions are held
            out by ``group_id``.
        test: test files (optional).
        format: reader name (``spare``, ``critique``, ``stepwise``, ...).
        reader_options: reader options (e.g. ``{add_reference: true}`` for reference targets).
        label_policy: label policies applied after reading, in order.
        tokenizer: tokenizer path or hub id (``tiny`` for the bundled one).
        template: ``chat`` (tokenizer's chat template) or ``plain``.
        mode: ``critique`` (train a critic) or ``refine`` (train a refiner).
        unlabeled: a record with an unlabeled step is ``reject``ed or cut before it (``truncate``).
        refine_target: what a refiner learns to write: the ``reference`` solution or a correct
            ``candidate`` of the same question.
        quote_steps: the critique repeats each step before its explanation (see
            :class:`~spare_train.critique.template.CritiqueTemplate`).
        max_length: tokens per prompt + target.
        max_prompt_length: prompt tokens kept when an example is too long.
        batch_size: examples per batch.
        val_fraction: share of questions held out when ``val`` is not given.
        seed: seed of the hold-out split, the sampler and the choice of candidate targets.
        group_by_length: batch examples of similar length (less padding).
        num_workers: DataLoader workers.
        cache_dir: where to cache tokenised datasets (none: in memory).
        strict: stop at the first bad record instead of rejecting and reporting it.
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        format: str = "spare",
        reader_options: dict[str, Any] | None = None,
        label_policy: PolicySpec | list[PolicySpec] | None = None,
        tokenizer: str = "tiny",
        template: Literal["chat", "plain"] = "chat",
        mode: Literal["critique", "refine"] = "critique",
        unlabeled: Unlabeled = "reject",
        refine_target: RefineTarget = "reference",
        quote_steps: bool = False,
        max_length: int = 1024,
        max_prompt_length: int | None = 512,
        batch_size: int = 4,
        val_fraction: float = 0.1,
        seed: int = 0,
        group_by_length: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
        strict: bool = False,
    ):
        super().__init__(
            train=train, val=val, test=test, format=format, reader_options=reader_options,
            label_policy=label_policy, tokenizer=tokenizer, template=template, view="filtered",
            max_length=max_length, max_prompt_length=max_prompt_length, batch_size=batch_size,
            val_fraction=val_fraction, seed=seed, group_by_length=group_by_length, num_workers=num_workers,
            cache_dir=cache_dir, strict=strict,
        )  # fmt: skip
        self.template = CritiqueTemplate(quote_steps=quote_steps)
        # one completion per example, as the policy module's SFT expects; set explicitly, since
        # under LightningCLI the hyper-parameters are this class's arguments only
        self.hparams["view"] = "filtered"

    def groups(self, records: list[StepRecord]) -> tuple[list[list[StepRecord]], dict[str, Any]]:
        """One record per example; the critique (and the refinement target) ride in ``extra``."""
        hp = self.hparams
        if hp.mode == "critique":
            items = critique_records(records, hp.unlabeled, self.report, self.template)
            kept = [replace(r, extra={**r.extra, "critique": c}) for r, c in items]
            wrong = sum(c.first_error >= 0 for _, c in items)
            return [[r] for r in kept], {"summary": f"{len(kept)} critiques ({wrong} with an incorrect step)"}
        refs = refinement_examples(records, hp.refine_target, hp.unlabeled, hp.seed, self.report, self.template)
        kept = [replace(x.candidate, id=f"{x.candidate.id}->{x.target.id}",
                        extra={**x.candidate.extra, "critique": x.critique, "refine_target": x.target})
                for x in refs]  # fmt: skip
        return [[r] for r in kept], {"summary": f"{len(kept)} refinements (target: {hp.refine_target})"}

    def turn(self, record: StepRecord) -> Turn:
        critique = record.extra["critique"]
        if self.hparams.mode == "critique":
            text, spans = self.template.render_spans(critique)
            labels: list[float | None] = [float(ok) for ok in critique.verdicts]
            return Turn(self.template.prompt(record.prompt, record.steps, record.preamble), text, spans, labels)
        target = record.extra["refine_target"]
        text, spans = response_text(target)
        prompt = self.template.refine_prompt(record.prompt, record.steps, critique, record.preamble)
        return Turn(prompt, text, spans, [CORRECT] * len(spans))

    def state_dict(self) -> dict[str, Any]:
        """The read report, plus the mode and template (``spare-train export`` writes them into the
        critic's or refiner's folder)."""
        return {**super().state_dict(), STATE_KEY: {"mode": self.hparams.mode, "template": asdict(self.template)}}
