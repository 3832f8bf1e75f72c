"""Rendering the executed report notebook to a self-contained HTML file (no code, no network)."""

from __future__ import annotations

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def render_html(executed_notebook: str | Path, output: str | Path) -> Path:
    """HTML with the code cells and prompts left out, figures embedded as PNG data, and no
    script or style fetched from the network."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="offline",
        extra_template_basedirs=[str(TEMPLATES_DIR)],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    notebook = nbformat.read(str(executed_notebook), as_version=4)
    for cell in notebook.cells:
        # Progress bars and warnings go to stderr; a reader of the report needs neither.
        if cell.get("cell_type") == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    body, _ = exporter.from_notebook_node(notebook)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(body, encoding="utf-8")
    return output
