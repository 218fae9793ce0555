"""Fast greedy plans: always an answer, in milliseconds to a couple of seconds at 25,000 VMs.

Phases, in priority order (each spends the shared move/MiB budget):
1. drain / evacuate hosts that must be emptied;
2. hard-rule fixes (pins, anti-affinity, affinity);
3. the mode's objective: balance (capacity relief first, then hottest -> coldest best-fit moves
   that reduce the weighted sum of squared load deviations by more than the move costs, polish,
   band) or consolidate (hotspot relief into a band, whole-host emptying: planner/consolidate.py).

VMs of one hard affinity group that share a host move together (a "unit").

Modules: context (the working state and budget), scoring (units, fit, best target), mandatory
(drains, rule fixes), opening (beam descent), balance (heap balance), view (load arrays and the
minimax score), polish and swaps (minimax polish), band (band tightening, reband), run (the
order of the phases, repolish after CP-SAT).
"""
