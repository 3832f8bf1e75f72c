"""`torchrun ... -m lib.training RUN_DIR|RUN [name=value ...]`: one run trained on torchrun's processes
(lib/training/distributed.py says how; `python -m lib.training --help` how to call it)."""

from lib.training.distributed import main

raise SystemExit(main())
