"""The histopathology workbook's shared library: everything the notebooks call.

A map, by part; arrows point down (a part imports only those below it):

    doors        pipeline.py    `make run-all` / `make report`: make's command line, preflight checks,
                                notebooks through papermill, stage fingerprints (what reruns when)
                 jobs.py        `make run-all JOBS=N`: the devices and kernel environment of each run at once
                 lab.py         `make lab`: JupyterLab on 127.0.0.1
    report/      evaluate.py    test predictions from each run's best checkpoint, the submission
                 facts.py       per-run facts as typed records, computed once from a run's folder
                 results.py     the report's sentences and tables, written from those records
                 figures.py     every figure; explain.py what the networks learned; render.py HTML and PDF
    training/    loop.py        train_one_epoch, evaluate, fit in stages; run_folder.py runs/<run>/;
                                speed.py device and precision settings; environment.py the machine;
                                distributed.py a run on several processes under torchrun (DDP), whose
                                entry point is `python -m lib.training`
    models       models.py      the baseline CNN, ResNet50, the small CNN; weights.py pretrained files
    data/        layouts, decode, cache, tiles, splits, batches, augment, stain, synthetic (one module per job)
    stats.py     intervals on those scores (bootstrap, by tile or by group), paired comparisons of two
                 runs (McNemar, DeLong), calibration (reliability bins, ECE)
    metrics.py   scores that training and evaluation share (class counts, majority rate, accuracy, ...)
    progress.py  progress bars: redrawn in a terminal or JupyterLab, plain lines in a log
    files.py     files written whole (temporary name, fsync, rename) and a full disk said in one message;
                 workers.py worker processes that die with the process that started them
    config.py    RunConfig, the one declaration of a run's parameters; registry.py registry.toml;
                 paths.py where things live; writer_lock.py one writer per folder (runs/, reports/)

Benchmarks live apart in bench/ (`make bench`, `make bench-scale`); nothing here imports them.
"""
