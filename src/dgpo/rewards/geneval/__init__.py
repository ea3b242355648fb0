"""GenEval without mmdetection: the official rules (:mod:`.rules`) on any detector's output."""

from dgpo.rewards.geneval.rules import (
    COLORS,
    PARTIAL,
    RELATIONS,
    ColorFn,
    Detection,
    Verdict,
    relative_position,
    score_image,
    summarize,
)

__all__ = ["COLORS", "PARTIAL", "RELATIONS", "ColorFn", "Detection", "Verdict", "relative_position",
           "score_image", "summarize"]
