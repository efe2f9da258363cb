"""Critique models from step annotations (AutoMathCritique, arXiv 2411.16579): the critique
template (:mod:`.template`), critique and refinement examples (:mod:`.views`), their DataModule
(:mod:`.data`), generation and strict parsing of critiques (:mod:`.generate`) and the export's
model card (:mod:`.export`). Training is the policy module's SFT objective; recipes name
``spare_train.critique.CritiqueDataModule``."""

from spare_train.critique.data import CritiqueDataModule
from spare_train.critique.template import TEMPLATE, Critique, CritiqueTemplate, ParsedCritique, StepCritique

__all__ = ["TEMPLATE", "Critique", "CritiqueDataModule", "CritiqueTemplate", "ParsedCritique", "StepCritique"]
