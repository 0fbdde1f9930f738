"""The reference VAE and its variants: the model, the latent priors, the loss and its sums."""
