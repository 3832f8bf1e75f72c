"""The training part: one run from its config to its run folder.

    loop          train_one_epoch, evaluate, and fit, which trains a run in labelled stages
    run_folder    runs/<run>/: its files, how each is written (atomically) and read
    speed         device, precision, channels_last, compile and host-memory settings
    environment   the machine and versions a run records
    distributed   a run on several processes: torchrun, the process group, DDP, shares of each batch;
                  `torchrun ... -m lib.training RUN_DIR|RUN` is its entry point (__main__.py)

Nothing here imports the report or the doors.
"""

from lib.training.loop import fit

__all__ = ["fit"]
