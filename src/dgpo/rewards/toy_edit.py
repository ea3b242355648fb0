"""The toy EDITING world's reward (:mod:`dgpo.toy.edit_scorer`): was the edit done (GenEval's rules on the
edit's clauses) and the rest of the source kept (every untouched object in place, nothing extra);
partial credit (``toy_edit``: edit x kept) or strict 0/1 (``toy_edit_strict``). Takes images
[B, 3, H, W] in [0, 1] and the rows of :mod:`dgpo.toy.edit_grammar` (``toy_edit:train`` / ``toy_edit:test``);
its eval rows flag ``edit_ok`` and ``kept_ok`` (the held-out accuracies of the edit alone and of keeping
the rest)."""

from __future__ import annotations

from dgpo.rewards.verdict import VerdictReward
from dgpo.toy.edit_scorer import EditVerdict, score_edit


class ToyEditReward(VerdictReward):
    key = "toy_edit"
    flags = ("edit_ok", "kept_ok")

    def judge(self, item, meta: dict) -> EditVerdict:
        return score_edit(item, meta)
