"""Things built on top of finetune(): cross-validation, comparison with significance, the planner."""
