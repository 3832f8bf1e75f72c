"""Rendering the executed report notebook for readers: self-contained HTML (no code, no network)
and a PDF printed by an already installed Chromium."""

from __future__ import annotations

import functools
import os
from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# The reader's page, for HTML and PDF alike: our offline template, no code, no prompts.
EXPORT_OPTIONS = {
    "template_name": "offline", "extra_template_basedirs": [str(TEMPLATES_DIR)],
    "exclude_input": True, "exclude_input_prompt": True, "exclude_output_prompt": True,
}  # fmt: skip


def _reader_notebook(notebook):
    """The executed notebook without what a reader needs nothing of: progress bars and warnings
    (stderr)."""
    for cell in notebook.cells:
        if cell.get("cell_type") == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    return notebook


def render_html(executed_notebook: str | Path, output: str | Path) -> Path:
    """HTML with the code cells and prompts left out, figures embedded as PNG data, and no
    script or style fetched from the network, written whole or not at all. Returns its path."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(**EXPORT_OPTIONS, embed_images=True)
    body, _ = exporter.from_notebook_node(_reader_notebook(nbformat.read(str(executed_notebook), as_version=4)))
    return _write_whole(Path(output), body.encode("utf-8"))


def _write_whole(output: Path, data: bytes) -> Path:
    """`data` written to `output` whole or not at all: a stop while writing (Ctrl-C, a full disk)
    leaves the file that was there, not half of a new one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output


# `chromium --version` answers in 0.2 s (Debian's); one that has not answered in this long is hung.
CHROMIUM_CHECK_S = 10
# Printing the report took 5 s for the quick profile on 2 shared cores; PDF_EXPORT_S bounds a Chromium
# that hangs while printing (its launch is bounded by playwright's own 30 s).
PDF_EXPORT_S = 180
EXPORT_CLOSE_S = 10  # a cancelled export closing its browser
MEND_CHROMIUM = "`apt-get install chromium` (Debian/Ubuntu), or set CHROMIUM=/path/to/a/working/chromium"


def _chromium_candidates() -> list[str]:
    """Chromium executables that are installed, in the order they are tried: $CHROMIUM, Debian's
    package (or another on PATH), one that playwright installed."""
    import shutil

    candidates = [os.environ.get("CHROMIUM")]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")]
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            candidates.append(playwright.chromium.executable_path)
    except Exception:  # playwright missing or its browser never installed: just not a candidate
        pass
    found = [c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)]
    return list(dict.fromkeys(found))


def chromium_problem(chromium: str) -> str:
    """What is wrong with the Chromium at `chromium`, found by running `chromium --version` for at most
    CHROMIUM_CHECK_S: "" when it answers with a version, else what it did ("`--version` exited 1:
    <its first line of output>", "... printed nothing", "... did not answer within 10 s"). Ubuntu's
    chromium-browser stub, which asks for a snap, exits 1 here."""
    import signal
    import subprocess

    try:
        # Its own process group, killed whole on timeout: a wrapper script's child would otherwise hold
        # the pipes open, and the check would wait for it after all.
        process = subprocess.Popen([chromium, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, errors="replace", start_new_session=True)  # fmt: skip
    except OSError as error:
        return f"it could not be started ({error.strerror or error})"
    with process:
        try:
            out, err = process.communicate(timeout=CHROMIUM_CHECK_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return f"`--version` did not answer within {CHROMIUM_CHECK_S} s"
    said = next((line.strip() for line in (err + "\n" + out).splitlines() if line.strip()), "")
    if process.returncode != 0:
        return f"`--version` exited {process.returncode}" + (f": {said}" if said else ", printing nothing")
    if not out.strip():
        return "`--version` printed nothing"
    return ""


def find_chromium() -> str | None:
    """An already installed Chromium that works: the first of $CHROMIUM, Debian's package, or one that
    playwright installed whose `--version` answers (chromium_problem). None when there is none;
    broken_chromiums() says which were passed over. Nothing is downloaded."""
    return next((c for c in _chromium_candidates() if not _checked_problem(c)), None)


def broken_chromiums() -> list[tuple[str, str]]:
    """(path, what is wrong) for each installed Chromium that does not work (chromium_problem)."""
    return [(c, problem) for c in _chromium_candidates() if (problem := _checked_problem(c))]


def _checked_problem(chromium: str) -> str:
    """chromium_problem, run once per executable file as it is now (its path, size and time)."""
    stat = Path(chromium).stat()
    return _problem_of(chromium, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _problem_of(chromium: str, size: int, mtime_ns: int) -> str:
    return chromium_problem(chromium)


# Flags for a headless Chromium on a machine with no network: no background requests, no sandbox
# (root in containers), no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip


def _pdf_exporter_class():
    from nbconvert.exporters import WebPDFExporter

    class OfflineWebPDFExporter(WebPDFExporter):
        """nbconvert's webpdf exporter, but launching a given Chromium binary: nbconvert has no
        setting for the browser's path, and its own fallback would download one."""

        executable_path = ""

        def run_playwright(self, html):
            import asyncio
            import tempfile
            import threading

            from playwright.async_api import async_playwright

            async def main(html_file: str) -> bytes:
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(executable_path=self.executable_path, args=CHROMIUM_ARGS)
                    page = await browser.new_page()
                    await page.emulate_media(media="print")
                    await page.goto(f"file://{html_file}", wait_until="networkidle")
                    pdf = await page.pdf(print_background=True, format="A4", prefer_css_page_size=True,
                                         margin={"top": "14mm", "bottom": "14mm", "left": "12mm", "right": "12mm"})  # fmt: skip
                    await browser.close()
                    return pdf

            with tempfile.NamedTemporaryFile(suffix=".html", delete=False) as handle:
                handle.write(html.encode("utf-8"))
            # Its own thread, so that this works inside a running event loop (a notebook) too, waited on
            # through an Event so that Ctrl-C (and SIGTERM, in the pipeline) reaches the caller's thread at
            # once. On a stop or a hang the export is cancelled: leaving playwright's context closes its
            # driver, and the driver its Chromium (left alone, both would outlive this process).
            outcome, running, done = {}, {}, threading.Event()

            async def export() -> bytes:
                running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
                return await main(handle.name)

            def work():
                try:
                    outcome["pdf"] = asyncio.run(export())
                except BaseException as error:  # handed to the caller's thread
                    outcome["error"] = error
                finally:
                    done.set()

            def cancel():
                if "task" in running:
                    running["loop"].call_soon_threadsafe(running["task"].cancel)
                try:
                    done.wait(EXPORT_CLOSE_S)
                except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                    pass

            try:
                threading.Thread(target=work, name="pdf export", daemon=True).start()
                if not done.wait(PDF_EXPORT_S):
                    cancel()
                    raise TimeoutError(f"it had not printed the report after {PDF_EXPORT_S} s")
            except KeyboardInterrupt:
                cancel()
                raise
            finally:
                os.unlink(handle.name)
            if "error" in outcome:
                raise outcome["error"]
            return outcome["pdf"]

    return OfflineWebPDFExporter


def _browser_said(error: Exception) -> str:
    """The gist of a failed export: the browser's exit code and first line on stderr where playwright's
    call log holds them (its first line says only "Target page, context or browser has been closed"),
    else that first line."""
    import re

    text = str(error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    exit_code = re.search(r"exitCode=(\d+)", text)
    stderr = re.search(r"\[pid=\d+\]\[err\] *(.+)", text)
    if not (exit_code or stderr):
        return first
    return ", ".join([*([f"exited {exit_code.group(1)}"] if exit_code else []), *([f"said: {stderr.group(1).strip()}"] if stderr else [])])


def render_pdf(executed_notebook: str | Path, output: str | Path, chromium: str | None = None) -> Path | None:
    """The same page as render_html, printed to PDF by an installed Chromium (find_chromium when none
    is given) and written whole or not at all. Returns the PDF's path; or None after one message
    saying why there is none and how to mend it: no Chromium, or one that does not work (its path and
    what it said), or one that failed to print the page. The HTML is unaffected."""
    output = Path(output)
    chromium = chromium or find_chromium()
    if chromium is None:
        broken = broken_chromiums()
        if broken:
            tried = "; ".join(f"the Chromium at {path} does not work ({problem})" for path, problem in broken)
            print(f"{output} was not written (the HTML report was): {tried}. To get the PDF: {MEND_CHROMIUM}.", flush=True)
        else:
            print(f"No Chromium found, so {output} was not written (the HTML report was). To get the PDF: `apt-get install chromium` "
                  "(Debian/Ubuntu), or `python -m playwright install chromium` where there is internet, or set CHROMIUM=/path/to/chromium.",
                  flush=True)  # fmt: skip
        return None
    given = os.environ.get("CHROMIUM")
    if given and Path(given) != Path(chromium) and Path(given).is_file():  # the user asked for that one: say why it is not used
        print(f"CHROMIUM={given} does not work ({_checked_problem(given)}); printing with {chromium} instead", flush=True)
    import nbformat

    exporter = _pdf_exporter_class()(**EXPORT_OPTIONS)
    exporter.executable_path = chromium
    notebook = _reader_notebook(nbformat.read(str(executed_notebook), as_version=4))
    try:
        pdf, _ = exporter.from_notebook_node(notebook)
    except Exception as error:  # playwright's errors (launch, crash, timeout) and ours: the Chromium failed, not the report
        print(f"{output} was not written (the HTML report was): the Chromium at {chromium} failed to print it ({_browser_said(error)}). "
              f"To get the PDF: {MEND_CHROMIUM}.", flush=True)  # fmt: skip
        return None
    return _write_whole(output, pdf)
