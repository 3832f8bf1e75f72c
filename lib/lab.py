"""`make lab`: JupyterLab on this machine only (127.0.0.1), token required, in notebooks/, with
the workbook's kernel as the default.

    python -m lib.lab [--port 8888]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys

from lib.paths import KERNEL_NAME, NOTEBOOKS_DIR


def lab_command(port: int, token: str) -> list[str]:
    # Jupyter refuses root unless told; containers and CI machines often run as root.
    as_root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", *as_root,
        "--ServerApp.ip=127.0.0.1",  # never reachable from other machines
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={NOTEBOOKS_DIR}",
        f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8888)
    args = parser.parse_args(argv)
    token = secrets.token_hex(24)
    print(f"JupyterLab: http://127.0.0.1:{args.port}/lab?token={token}\n(stop it with Ctrl-C)", flush=True)
    try:
        return subprocess.call(lab_command(args.port, token))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
