"""The README's code examples run as written (against the fake server)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from wachat_async.testing import FakeWachatServer

from .conftest import KEY, NAME

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    """Every ```python block of the README, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def block_containing(text: str) -> str:
    """The one README python block that contains *text*."""
    (block,) = [b for b in python_blocks() if text in b]
    return block


async def test_ten_line_example_runs_against_the_fake_server(
    server: FakeWachatServer, tmp_path: Path
) -> None:
    """The 'Ten lines' example fetches, prints and saves a QR (key and URL from the env)."""
    script = tmp_path / "example.py"
    script.write_text(block_containing("asyncio.run(main())"), encoding="utf-8")
    env = {**os.environ, "WACHAT_API_KEY": KEY, "WACHAT_BASE_URL": server.base_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith(f"QRImage(instance_name='{NAME}', ")
    assert (tmp_path / "qr.png").read_bytes().startswith(b"\x89PNG")
    assert KEY not in out.decode() + err.decode()


async def test_fake_server_example_is_a_passing_test(wachat_server: FakeWachatServer) -> None:
    """The 'Testing your own code' example passes when run as a test with the fixture."""
    namespace: dict[str, object] = {}
    exec(block_containing("async def test_qr_survives_a_502"), namespace)  # noqa: S102
    test = namespace["test_qr_survives_a_502"]
    assert callable(test)
    await test(wachat_server)
    assert wachat_server.request_count("t1_abc_store") == 3
