"""VAE on dynamically binarized MNIST, the IWAE paper's k=1 baseline.

The model of Burda et al. (2015), one stochastic layer: 784-200-200-50 tanh
encoder, 50-200-200-784 tanh decoder with Bernoulli logits, trained with
`keras_vib.models.VAE` (one-sample ELBO, closed-form KL). Training images are
re-binarized every epoch; Adam (epsilon 1e-4) with the paper's learning rate
schedule. The script reports the test negative log-likelihood estimated with
`keras_vib.models.log_likelihood` (K=5000 importance samples, all 10,000 test
images by default; paper: 86.76 nats), the number of active latent units and
the training time, and can save figures of samples, reconstructions and a
spherical interpolation.

    python experiments/mnist_vae.py --data-dir ../shared/data --epochs 20 \\
        --json /tmp/vae.json --figure-dir docs/img

`--smoke` runs the whole script in seconds on tiny synthetic data.
See `mnist_iwae.py` for k > 1 and `_iwae_paper_model.py` for the details.
"""

from _iwae_paper_model import parse_args
from _iwae_paper_model import run

import keras_vib as kv
import keras_vib.models


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv=argv)
    return run(
        args,
        lambda encoder, decoder, seed: kv.models.VAE(
            encoder, decoder, likelihood="bernoulli", seed=seed, name="vae"
        ),
        name="vae",
        paper_key="vae",
    )


if __name__ == "__main__":
    main()
