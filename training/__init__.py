"""mattrt.training: training of the synthetic-domain model aim_synthetic."""
