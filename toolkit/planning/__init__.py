"""From model facts and device facts to a plan: the memory formulas, the rules of which backend runs what, and the planner."""
