"""Training along the tempering ladder, without data, in one module per job:

settings  TrainingSettings (how long and how hard at each beta), the optimiser it builds
losses    the loss an update differentiates, per objective (mean_force, joint, hybrid, fab)
step      ``init`` / ``update_step`` over a TrainState (the optax / blackjax pattern)
health    whether training is going anywhere: the stop rules, the chains' heating warning
ladder    ``train``: the ladder walk around the updates, reporting through Callbacks (the
          application layer records metrics and checkpoints: :mod:`coarseflow.checkpointing`)
"""
