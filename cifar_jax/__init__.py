"""cifar_jax: small image classifiers trained over many seeds at once with JAX and Flax NNX."""
