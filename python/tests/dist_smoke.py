"""Smoke test of an installed distribution (wheel or sdist), run by run-tests.sh in a
fresh venv holding nothing but that distribution and its dependencies.

Usage: python dist_smoke.py (MUSTER_BIN: the muster binary). Checks that ``muster``
is imported from the venv, not from a source tree, that its metadata and type
marker are installed, and that it registers and discovers against a real agent.
Not a pytest module: it runs outside the test environment on purpose.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    import muster

    where = Path(muster.__file__).resolve()
    assert where.is_relative_to(Path(sys.prefix).resolve()), f"imported from {where}"
    assert (where.parent / "py.typed").exists(), "py.typed missing"
    assert importlib.metadata.version("muster-client") == muster.__version__

    with tempfile.TemporaryDirectory(prefix="muster-smoke-") as data:
        agent = subprocess.Popen(
            [os.environ["MUSTER_BIN"], "agent", "--http-addr", "127.0.0.1:0", "--data-dir", data],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert agent.stdout is not None
            line = agent.stdout.readline().strip()  # printed once it serves
            assert line.startswith("muster listening on "), line
            url = line.removeprefix("muster listening on ")
            with muster.MusterClient(url) as owner, muster.MusterClient(url) as reader:
                h = owner.register("smoke", 8080, address="127.0.0.1", version="1.0.0")
                found = reader.wait_for("smoke", lambda r: len(r) == 1, timeout=10)
                assert found.ids == [h.id] and found[0].version == "1.0.0"
                owner.close()
                reader.wait_for("smoke", lambda r: len(r) == 0, timeout=10)
        finally:
            agent.kill()
            agent.wait()
    print(f"smoke test passed: muster {muster.__version__} from {where.parent}")


if __name__ == "__main__":
    main()
