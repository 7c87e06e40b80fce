"""What drives the core for one job: the train loop, one validation pass, the workdir and its lock,
checkpoints, interrupts, progress lines, results files and evaluation (`--mode=eval`)."""
