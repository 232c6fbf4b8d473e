"""Prediction: one-shot all-atom samples x = Phi(X, Y), their importance log-weights and
log Z (METHOD.md section 7), in one module per job:

settings     PredictionSettings ([prediction]: how q(Y|X), the batches and the refinement run)
conditional  q(Y|X) of the samples: the target's exact one, a Laplace fit, AIS from that fit;
             a learned conditional's start from the Laplace fits (fit_to_laplace)
draw         draw_samples: X ~ q(X), Y ~ q(Y|X), log-weights, in batches of one shape; log Z
refine       refine: a learned model's samples by AIS toward p_beta in q's latent space
"""
