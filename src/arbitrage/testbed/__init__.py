"""The testbed: a synthetic multi-step arithmetic task with tiny trained draft/target LMs and an exact step
checker as PRM, where the whole method runs end to end on a CPU in minutes (`arbitrage demo`)."""
