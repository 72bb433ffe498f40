"""The promotion rule: does a candidate model replace the champion? Pure Python, no dagster.

Both models are scored on the same test split version by the same main metric. A candidate is
promoted when its blocking checks passed and it beats the champion by more than ``margin``
(``rule="margin"``), or by more than ``margin`` with a significant paired difference
(``rule="significant"``: the paired sign-flip test of ``ft_assets.evaluation.metrics``, p < 0.05).
A tie keeps the champion. The first candidate, with no champion yet, is promoted when its checks passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ft_assets.evaluation.metrics import PairedTest, paired_test

Rule = Literal["margin", "significant"]
PROMOTED: Literal["promoted"] = "promoted"
KEPT: Literal["kept"] = "kept"


@dataclass(frozen=True)
class ModelScores:
    """A model's scores on one test split version: the main metric, its 95% interval and the per-example scores."""

    asset: str
    version: str
    main_metric: str
    main_score: float
    ci_low: float
    ci_high: float
    per_example: Sequence[float]

    @property
    def name(self) -> str:
        """``asset@version``."""
        return f"{self.asset}@{self.version}"

    def summary(self) -> str:
        """Return the main score with its interval, e.g. ``exact_match 0.820 [0.700, 0.920]``."""
        return f"{self.main_metric} {self.main_score:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


@dataclass(frozen=True)
class Decision:
    """What the rule decided, why, and the paired comparison it decided on (None without a champion)."""

    decision: Literal["promoted", "kept"]
    reason: str
    comparison: PairedTest | None = None

    @property
    def promoted(self) -> bool:
        """True when the candidate becomes the champion."""
        return self.decision == PROMOTED


def decide(
    candidate: ModelScores,
    champion: ModelScores | None,
    *,
    failed_checks: Sequence[str] = (),
    rule: Rule = "margin",
    margin: float = 0.0,
    samples: int = 2000,
    seed: int = 0,
) -> Decision:
    """Decide whether ``candidate`` replaces ``champion``; the reason says it in words.

    Raises ValueError when the two were not scored by the same metric on the same number of examples.
    """
    if failed_checks:
        return Decision(KEPT, f"its checks failed ({', '.join(failed_checks)}): a model whose checks failed never "
                              "serves")  # fmt: skip
    if champion is None:
        return Decision(PROMOTED, f"no champion yet; candidate scores {candidate.summary()}")
    if (candidate.asset, candidate.version) == (champion.asset, champion.version):
        return Decision(KEPT, f"the candidate is already the champion ({candidate.summary()})")
    if candidate.main_metric != champion.main_metric:
        raise ValueError(f"candidate scored by {candidate.main_metric}, champion by {champion.main_metric}")
    test = paired_test(candidate.per_example, champion.per_example, samples=samples, seed=seed)
    scores = f"candidate {candidate.summary()} vs champion {champion.summary()} on the same {test['n']} test examples"
    return Decision(*_compare(test, rule, margin, scores), test)


def _compare(test: PairedTest, rule: Rule, margin: float, scores: str) -> tuple[Literal["promoted", "kept"], str]:
    """Return the decision and its reason from the paired comparison of candidate and champion."""
    difference = test["difference"]
    if math.isnan(difference):
        return KEPT, f"no example has a score from both models ({scores})"
    paired = f"difference {difference:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}], p = {test['p_value']:.3f}"
    if difference <= margin:
        return KEPT, f"does not beat the champion by more than the margin {margin:g}: {scores}; {paired}"
    if rule == "significant" and not test["significant"]:
        return KEPT, f"better by {difference:.3f}, but not significantly (p >= 0.05): {scores}; {paired}"
    why = "significantly better" if rule == "significant" else f"better by more than the margin {margin:g}"
    return PROMOTED, f"{why}: {scores}; {paired}"
