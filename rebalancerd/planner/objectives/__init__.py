"""What the planner optimises, one module per mode, chosen through `registry.objective_for`.

An objective (base.Objective) holds everything that differs by mode: the greedy passes after
drains and rule fixes, the per-VM CPU demand basis, whether CP-SAT and the repolish run and the
terms and score CP-SAT uses, the bound, the order of the moves, the objective value reported
and the per-migration score. Adding one: a module here and one line in registry.py.
"""
