"""Plumbing no notebook imports: weights, latent cache, notebook execution, sweeps, report, bench."""
