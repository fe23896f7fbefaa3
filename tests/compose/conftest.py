"""The compose stack's tests run only from `make compose-test`.

They need a Docker engine and the images (`make compose-test` installs and
builds what is missing, then sets TANDEM_COMPOSE_TEST=1); the default suite
does not collect them.
"""

from __future__ import annotations

import os

if os.environ.get("TANDEM_COMPOSE_TEST") != "1":
    collect_ignore_glob = ["test_*.py"]
