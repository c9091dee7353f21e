"""examples/notebook.ipynb runs top to bottom in a real kernel, against the fake server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


@pytest.fixture
def executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The notebook after running every cell with the python3 kernel of this interpreter.

    Jupyter's runtime and IPython's profile folders go to a temporary folder, so the test
    needs nothing from the user's home and leaves nothing there. The ``python3`` kernel spec is
    found in ``sys.prefix/share/jupyter`` (installed with ipykernel), or, failing that, is
    ipykernel's built-in spec; either way it runs ``sys.executable``.
    """
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("WACHAT_API_KEY", raising=False)
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError if any cell fails
    return notebook


def outputs(notebook: Any) -> list[dict[str, Any]]:
    """Every output of every code cell, in order."""
    return [dict(o) for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_notebook_runs_and_shows_the_qr_inline(executed: Any) -> None:
    """Every cell runs: the QR shows inline, the fleet poll reports progress and two failures."""
    results = outputs(executed)
    assert not [o for o in results if o["output_type"] == "error"]
    pngs = [o["data"]["image/png"] for o in results if "image/png" in o.get("data", {})]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")
    html = [o["data"]["text/html"] for o in results if "text/html" in o.get("data", {})]
    assert any("22/22 fetched, 2 failed" in h for h in html)
    assert any('src="data:image/png;base64,' in h for h in html)
    printed = "".join(o.get("text", "") for o in results if o["output_type"] == "stream")
    assert "QRNotSupportedError (409)" in printed
    assert "InstanceNotFoundError (404)" in printed
    assert "handled: 404 Not Found" in printed
    assert "notebook-demo-key" not in str(results)
