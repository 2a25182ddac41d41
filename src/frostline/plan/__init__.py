"""Plans: selectors, rules, the plan builder and `resolve`, the pure step from a plan and a
layer tree to a Resolution. Nothing here changes a model."""
