"""Rendering the executed report notebook for readers: self-contained HTML (no code, no network)
and a PDF printed by an already installed Chromium."""

from __future__ import annotations

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
    script or style fetched from the network."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(**EXPORT_OPTIONS, embed_images=True)
    body, _ = exporter.from_notebook_node(_reader_notebook(nbformat.read(str(executed_notebook), as_version=4)))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(body, encoding="utf-8")
    return output


def find_chromium() -> str | None:
    """An already installed Chromium: $CHROMIUM, Debian's package, or one that playwright
    installed. Nothing is downloaded."""
    import os
    import shutil

    candidates = [os.environ.get("CHROMIUM")]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")]
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            candidates.append(playwright.chromium.executable_path)
    except Exception:  # playwright missing or its browser never installed: just not a candidate
        pass
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


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
            import concurrent.futures
            import os
            import tempfile

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
            try:
                # Its own thread, so that this works inside a running event loop (a notebook) too.
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    return pool.submit(asyncio.run, main(handle.name)).result()
            finally:
                os.unlink(handle.name)

    return OfflineWebPDFExporter


def render_pdf(executed_notebook: str | Path, output: str | Path, chromium: str | None = None) -> Path | None:
    """The same page as render_html, printed to PDF by an installed Chromium. Without one, returns
    None after saying how to get it; the HTML is unaffected."""
    chromium = chromium or find_chromium()
    if chromium is None:
        print(
            "No Chromium found, so reports/report.pdf was not written (the HTML report was). To get the "
            "PDF: `apt-get install chromium` (Debian/Ubuntu), or `python -m playwright install chromium` "
            "where there is internet, or set CHROMIUM=/path/to/chromium."
        )
        return None
    import nbformat

    exporter = _pdf_exporter_class()(**EXPORT_OPTIONS)
    exporter.executable_path = chromium
    pdf, _ = exporter.from_notebook_node(_reader_notebook(nbformat.read(str(executed_notebook), as_version=4)))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(pdf)
    return output
