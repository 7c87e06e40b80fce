"""Data sets as whole uint8 arrays: local files (IDX, CIFAR batches, npz), TFDS, validation carves and folds."""
