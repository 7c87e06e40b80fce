"""`python -m cifar_jax.main`: kept so the documented command works; the command line lives in `cifar_jax.cli.main`."""

from cifar_jax.cli.main import run

if __name__ == "__main__":
    run()
