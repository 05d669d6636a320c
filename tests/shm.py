"""/dev/shm hygiene for the tests that SIGKILL engines and runs."""

from __future__ import annotations

from pathlib import Path


def leaked_shm(before: set[str]) -> list[Path]:
    """Shared-memory segments that appeared since `before` (a SIGKILLed vLLM engine or run never
    unlinks its own: ~0.4 GB each)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    return [p for p in shm.iterdir()
            if p.name not in before and p.name.startswith(("psm_", "areal_sys-"))]


def remove_leaked_shm(before: set[str]) -> None:
    import shutil

    for p in leaked_shm(before):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def shm_names() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir()} if shm.is_dir() else set()
