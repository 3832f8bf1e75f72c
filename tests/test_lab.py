"""`make lab`: JupyterLab on 127.0.0.1 with a token, the workbook's kernel, notebooks that run in it."""

import asyncio
import json
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import nbformat
import pytest

from lib.lab import lab_command
from lib.paths import KERNEL_NAME, NOTEBOOKS_DIR


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def lab():
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(lab_command(port, token), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                _get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {server.stdout.read()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        yield base, token, port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_answers_with_the_token_and_refuses_without(lab):
    base, token, _ = lab
    assert _get(f"{base}/api/status", token)[0] == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(f"{base}/api/kernels")
    assert refused.value.code == 403


def test_listens_on_loopback_only(lab):
    """Every listening socket on the server's port is bound to 127.0.0.1 (from the kernel's table)."""
    _, _, port = lab
    bound = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                bound.append(address)
    if not bound:
        pytest.skip("no /proc/net/tcp on this system to read listening sockets from")
    assert bound == ["0100007F"], f"listening on {bound}, expected 127.0.0.1 only"


def test_workbook_kernel_is_listed_and_the_default(lab):
    base, token, _ = lab
    _, specs = _get(f"{base}/api/kernelspecs", token)
    assert KERNEL_NAME in specs["kernelspecs"] and specs["default"] == KERNEL_NAME


def test_a_notebooks_first_cells_run_in_the_workbook_kernel(lab):
    """Start the workbook kernel through the server, as JupyterLab does, and run the baseline
    notebook's parameters cell and its import cell over the kernel's websocket."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    base, token, port = lab
    notebook = nbformat.read(str(NOTEBOOKS_DIR / "01_baseline_cnn.ipynb"), as_version=4)
    assert notebook.metadata.kernelspec.name == KERNEL_NAME
    code = [c.source for c in notebook.cells if c.cell_type == "code"][:2]
    first_import = "\n".join(line for line in code[1].splitlines() if line.startswith(("from ", "import ")))
    request = urllib.request.Request(f"{base}/api/kernels", data=json.dumps({"name": KERNEL_NAME}).encode(),
                                     headers={"Authorization": f"token {token}"}, method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        kernel = json.loads(response.read())

    async def run_cells() -> list[str]:
        socket_ = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels",
                                                      headers={"Authorization": f"token {token}"}))  # fmt: skip
        statuses = []
        for source in (code[0], first_import + "\nimport sys; print(sys.prefix)"):
            msg_id = uuid.uuid4().hex
            await socket_.write_message(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex, "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": source, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False},
            }))  # fmt: skip
            while True:
                message = json.loads(await asyncio.wait_for(socket_.read_message(), timeout=120))
                if message["msg_type"] == "execute_reply" and message["parent_header"].get("msg_id") == msg_id:
                    statuses.append(message["content"]["status"])
                    break
        socket_.close()
        return statuses

    assert asyncio.run(run_cells()) == ["ok", "ok"]
    assert kernel["name"] == KERNEL_NAME
