"""Train a model with a method from config, then export it.

    python train.py                                   # small CNN on the embedded digits
    python train.py data=cifar10_jpeg model=vgg16_bn_narrow method=corruption method.corruptions=gaussian_noise
    python train.py -m method.optim.lr=0.1,0.05       # Hydra multirun
See README.md for every option.
"""

from rws.cli.train import main

if __name__ == "__main__":
    main()
