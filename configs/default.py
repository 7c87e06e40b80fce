"""Defaults every study config starts from: the PyTorch tutorial LeNet on CIFAR-10.

Study configs import this, call `get_config()` and override fields. Every field a user may
override on the command line (`--config.a.b=v`) must exist here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.name = "default"
    config.seed = 0  # first model seed; seed i of the batch uses jax.random.fold_in(key(seed), i)
    config.num_seeds = 4  # models trained at once (vmapped) per hyperparameter setting
    config.num_epochs = 2
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.progress_every_s = 5.0  # a progress line inside an epoch at most this often (0 = off)
    # True: dead-ReLU fraction and per-layer gradient norms per chunk of steps into steps.jsonl
    # (about every execution.steps_per_call steps), besides the per-epoch means in metrics.jsonl.
    config.log_step_metrics = False
    # TensorBoard event files in W/tensorboard. clu's writer imports TensorFlow, ~6 s of every job's
    # start on 2 cores: False skips it (metrics.jsonl and results.json hold the same numbers).
    config.tensorboard = True
    config.checkpoint_every_epochs = 1
    # True: check this config end to end in seconds (one epoch of a few batches, small splits,
    # <= 2 seeds, schedules squeezed into the epoch; see cifar_jax/dev_run.py). Train and sweep only.
    config.dev_run = False
    # A workdir (relative: to this run's own) whose latest checkpoint gives every run its starting
    # parameters and batch statistics, run i from run i; optimizer, step and data order start fresh.
    config.init_from = ""

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"  # cifar10 | fashion_mnist | mnist
    config.data.source = "auto"  # auto (local dir, then tfds) | local | tfds
    config.data.dir = ""  # local files: npz, CIFAR-10 binary/python archives or IDX .gz
    config.data.tfds_data_dir = ""  # empty: TFDS's own default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    config.data.val_size = 10000.0  # >= 1: number of images; in (0, 1): fraction of train; 0: none
    config.data.train_limit = 0  # use only the first N training images (0 = all)
    config.data.test_limit = 0  # use only the first N test images (0 = all)
    config.data.num_folds = 0  # k > 1: k-fold cross-validation as one more vmapped run axis (val_size unused)
    config.data.folds = ()  # with num_folds: train only these folds (0-based; empty = all)
    config.data.seed = 0  # seeds the validation split and folds, independent of model seeds
    # True: every seed sees the same data order and augmentation (common random numbers); seeds
    # then differ in initialization and dropout only. See the README, "Shared data order".
    config.data.shared_order = False
    config.data.mean = (0.5, 0.5, 0.5)  # per-channel; broadcast from one value for 1 channel
    config.data.std = (0.5, 0.5, 0.5)

    config.model = ml_collections.ConfigDict()
    config.model.name = "cnn"  # cnn | mlp | block_cnn | resnet18
    config.model.conv_features = (6, 16)
    config.model.kernel_size = (5, 5)  # one per conv stage
    config.model.strides = (1, 1)
    config.model.padding = "VALID"  # VALID (PyTorch's default) | SAME
    config.model.pool = "max"  # max | avg | lp | none
    config.model.pool_size = 2
    config.model.activation = "relu"
    config.model.conv_batch_norm = False
    config.model.dense_batch_norm = False
    config.model.dense_features = (120, 84)  # hidden widths; the output layer is added
    config.model.dropout_rate = 0.0
    config.model.dropout_placement = "dense"  # none | conv | dense | all | head
    config.model.dropout_kind = "element"  # element | channel (Dropout2d: whole feature maps, conv stages only)
    config.model.init = "torch_default"
    config.model.init_conv_only = False  # apply `init` to conv layers only (torch_default elsewhere)
    config.model.bn_momentum = 0.9  # Flax convention: PyTorch momentum 0.1 == 0.9 here
    config.model.conv_impl = "auto"  # auto | xla | patches | winograd (same numbers, different speed)

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"  # sgd | adam | adamw | rmsprop
    config.optim.learning_rate = 1e-3
    config.optim.momentum = 0.9
    config.optim.nesterov = False
    config.optim.weight_decay = 0.0
    config.optim.weight_decay_mode = "coupled"  # coupled (torch SGD/Adam) | decoupled (AdamW)
    config.optim.decay_kernels_only = False
    config.optim.grad_clip_norm = 0.0  # 0 = off
    config.optim.schedule = "constant"  # constant | warmup_cosine | step | linear | one_cycle
    config.optim.warmup_epochs = 0.0
    config.optim.step_epochs = (30,)  # step decay boundaries
    config.optim.step_factor = 0.1
    config.optim.label_smoothing = 0.0

    config.augment = ml_collections.ConfigDict()
    config.augment.crop_padding = 0  # 0 = off; PyTorch RandomCrop(32, padding=4) is 4
    config.augment.crop_mode = "zero"  # zero | reflect
    config.augment.flip = False
    config.augment.brightness = 0.0
    config.augment.contrast = 0.0
    config.augment.saturation = 0.0
    config.augment.hue = 0.0
    config.augment.rotation_degrees = 0.0
    config.augment.cutout_size = 0
    config.augment.mixup_alpha = 0.0  # 0 = off

    # Traced hyperparameters to train as a product grid in the same program as the seeds, e.g.
    # config.hparam_grid.learning_rate = (1e-3, 1e-2, 1e-1); runs = grid settings x num_seeds.
    config.hparam_grid = ml_collections.ConfigDict()

    config.execution = ml_collections.ConfigDict()
    config.execution.steps_per_call = 0  # 0 = auto (backend dependent)
    config.execution.runs_per_group = 0  # runs vmapped together per step; 0 = auto (backend dependent)
    # slices of a batch whose gradients are computed one after another (a smaller working set on
    # CPU), for models without batch norm or dropout; 0 = auto (backend dependent)
    config.execution.microbatches = 0
    config.execution.compute_dtype = "auto"  # auto | float32 | bfloat16 (auto: bfloat16 on GPU/TPU)
    # auto | cpu | accelerator: whose automatic choices apply (accelerator on a CPU: tests of the
    # GPU/TPU path); auto follows the backend.
    config.execution.policy = "auto"
    # Device memory a job may plan for, in bytes (runs per group and the evaluation batch come from
    # the compiled step's memory analysis on accelerators); 0 = the device's own limit.
    config.execution.memory_limit_bytes = 0
    # True: XLA's deterministic GPU kernels (--xla_gpu_deterministic_ops), so a resumed or repeated
    # GPU run gives identical numbers, at some speed; CPU and TPU are deterministic already.
    config.execution.deterministic = False
    # Several processes (hosts, or one process per GPU): jax.distributed.initialize(). Left empty,
    # the coordinator, process count and id are detected on TPU VM slices, SLURM and Open MPI.
    config.execution.distributed = False
    config.execution.coordinator_address = ""  # host:port of process 0
    config.execution.num_processes = 0  # 0 = detect
    config.execution.process_id = -1  # -1 = detect
    # After SIGTERM/Ctrl-C a run saves at its next step boundary; one that reaches none (a peer
    # hangs in a collective) exits this many seconds after the signal, without a checkpoint (0: never).
    config.execution.stop_grace_s = 60.0

    config.eval = ml_collections.ConfigDict()
    config.eval.checkpoint = "latest"  # latest | best | step number
    config.eval.split = "test"  # test | val | train
    # Training scores validation every epoch and the test split at the final epoch and at each run's
    # best epoch (its best weights kept meanwhile: results.json's best_test_*); True: test every epoch.
    config.eval.test_every_epoch = False
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.keep = 2
    # Also save inside an epoch every this many minutes (0 = only at epoch ends and on SIGTERM /
    # Ctrl-C); for long CPU epochs on machines that can be taken away.
    config.checkpoint.every_minutes = 0.0
    config.checkpoint.best_metric = "val_accuracy"  # mean over runs; *_loss metrics are minimized
    config.checkpoint.overwrite = False  # True: move a different config's run aside and start anew

    return config
