"""Tempering schedules: the ladder beta_0 < beta_1 < ... < beta_K = 1 (METHOD.md section 5), in
one module per job:

schedules  AbstractSchedule (first_beta, next_beta), the limits every ladder keeps, and the
           fixed ladders Linear, Geometric, Explicit
adaptive   Adaptive: each step chosen from the model's samples (estimated KL and ESS)
config     the ``[tempering]`` table <-> a schedule
"""
