"""A run and its lifecycle: the search loop (:mod:`~evomerge.run.loop`), how candidates reach
the workers (:mod:`~evomerge.run.dispatch`), how many items they earn
(:mod:`~evomerge.run.fidelity`), the coarse-to-fine schedule (:mod:`~evomerge.run.schedule`),
the run directory and its archive, the reference points, confirmation and export."""
