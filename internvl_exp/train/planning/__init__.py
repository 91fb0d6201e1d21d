"""Before and beside a run: the memory planner, the FLOP model and the meta-device model summary worker."""
