"""Pure functions of a run: what a run is, its data streams, the train/eval step, the execution plan,
optimizers, losses, augmentation, metrics and the data staged on the device. No file I/O."""
