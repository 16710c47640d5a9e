"""From latent space to per-particle answers, and the metrics that check them."""
