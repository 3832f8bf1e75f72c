"""Progress bars: tqdm's redrawn bar in a terminal, plain whole lines in a log (no carriage
returns, no escape codes), whatever writes them."""

import io
import sys

import pytest

from lib import progress as progress_module
from lib.progress import PROGRESS_ENV, plain_output, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_jupyter(monkeypatch):
    """As in a shell: no interactive kernel, no override."""
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)


def test_a_log_gets_whole_lines_and_a_terminal_the_bar(no_jupyter):
    log = io.StringIO()
    for _ in progress(range(5), desc="decoding", unit="tile", file=log):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.endswith("\n") and "decoding" in text.splitlines()[-1] and "5/5" in text.splitlines()[-1], text

    screen = Terminal()
    for _ in progress(range(5), desc="decoding", unit="tile", file=screen):
        pass
    assert "\r" in screen.getvalue(), "a terminal keeps tqdm's redrawn bar"


def test_a_bar_left_behind_says_nothing_in_a_log_unless_it_runs_long(no_jupyter, monkeypatch):
    log = io.StringIO()
    for _ in progress(range(3), desc="epoch 0 train", unit="batch", leave=False, file=log):
        pass
    assert log.getvalue() == ""
    monkeypatch.setattr(progress_module, "PLAIN_INTERVAL_S", 0.0)
    for _ in progress(range(3), desc="epoch 1 train", unit="batch", leave=False, file=log):
        pass
    assert "epoch 1 train" in log.getvalue() and "\r" not in log.getvalue()


def test_the_environment_overrides_the_guess(no_jupyter, monkeypatch):
    assert plain_output(io.StringIO()) and not plain_output(Terminal())
    monkeypatch.setenv(PROGRESS_ENV, "plain")
    assert plain_output(Terminal())
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    assert not plain_output(io.StringIO())


def test_a_run_logged_to_a_file_holds_no_escape_codes(tiny_data, tmp_path, capfd, no_jupyter):
    from lib.config import run_config
    from lib.training import fit

    config = run_config("resnet50-10ep", profile="quick", data_dir=str(tiny_data), runs_dir=str(tmp_path), model="small",
                        tile_size=64, crop_size=48, epochs=2, batch_size=8, subset=0, device="cpu", cache_dir="")  # fmt: skip
    fit(config)
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "\x1b" not in out + err
    assert "[1/2], train_loss" in out + err  # the original's epoch lines still come through
