"""The training engine: one loop (:mod:`optimlab.engine.loop`) that drives a single run
(:mod:`optimlab.training`) and a vectorized group of runs (:mod:`optimlab.study.vectorized`) alike,
and the steppers that make a step of plain, constrained and local-flow training
(:mod:`optimlab.engine.steppers`)."""
