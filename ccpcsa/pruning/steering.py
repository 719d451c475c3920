"""Latency-target steps corrected by what the earlier steps really delivered.

The latency table (:mod:`export.layer_latency`) prices each conv in isolation; in the whole graph a step's real
latency drop is a steady fraction of the table's prediction (fixed per-node costs the isolated timings spread over the
convs; bench/README.md "Pruning for speed"), so a loop that aims each step at its goal with the raw table stops short.
:class:`StepGain` keeps the running ratio and aims the next step past the goal by its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The gain is clipped to this range: a step aims at most twice as far as its goal, and at least half as far. The
#: lower bound keeps one noisy reading from turning a step into a jump: with (0.25, 2.0) a first step read at 0.40
#: (the unpruned reference reads ±10 % between probes) sent resnet56's second step from −22 % to −75 % MACs at once.
GAIN_BOUNDS = (0.5, 2.0)


@dataclass
class StepGain:
    """Σ delivered / Σ predicted relative latency drop over the loop's steps so far (1.0 before the first step).

    A step starting at model ``m₀`` / reference ``r₀`` ms (timed interleaved), with the table's estimate ``e`` after
    it and ``m₁`` / ``r₁`` timed after it, predicted ``(m₀ − e) / r₀`` and delivered ``m₀/r₀ − m₁/r₁`` of the
    unpruned latency: relative to the reference timed beside it, so the machine's drift between the two measurements
    cancels. Summing over steps weighs each by its size (a small last step's noisy ratio counts little)."""

    predicted: float = 0.0
    delivered: float = 0.0

    @property
    def gain(self) -> float:
        """The clipped ratio (:data:`GAIN_BOUNDS`); 1.0 until a step has predicted a drop."""
        if self.predicted <= 0:
            return 1.0
        lo, hi = GAIN_BOUNDS
        return min(hi, max(lo, self.delivered / self.predicted))

    def aim(self, current_ms: float, goal_ms: float) -> float:
        """The table estimate to prune to so that ``gain`` of the predicted drop lands on ``goal_ms``:
        ``current − (current − goal) / gain`` (the goal itself at gain 1)."""
        return current_ms - (current_ms - goal_ms) / self.gain

    def record(self, start: tuple[float, float], estimated_ms: float, end: tuple[float, float]) -> None:
        """Add one step: ``start`` / ``end`` = (reference ms, model ms) timed before / after it, ``estimated_ms`` the
        table's estimate for the pruned model. A step the table predicted no drop for is not counted."""
        (r0, m0), (r1, m1) = start, end
        predicted = (m0 - estimated_ms) / r0
        if predicted > 0:
            self.predicted += predicted
            self.delivered += m0 / r0 - m1 / r1
