"""The ``hangfree`` command (``hangfree run ...``): the Rust command line of
``crates/hangfree-cli``, run by the extension module. Its workers are this same module:
``python -m hangfree._cli __worker``."""

from __future__ import annotations

import sys


def main() -> None:
    from hangfree import _core

    worker = [sys.executable, "-m", "hangfree._cli"]
    sys.exit(_core.cli_main(["hangfree", *sys.argv[1:]], worker))


if __name__ == "__main__":
    main()
