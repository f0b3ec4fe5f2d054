"""What the app gets from its command line and shares before any page runs: the workspace
path and the session key of the annotator's name (read by :mod:`labeler.ui.state` and by
:mod:`labeler.ui.auth`, which sits below it)."""

from __future__ import annotations

import argparse
import os
import sys

ENV_WORKSPACE = "LABELER_WORKSPACE"
#: ``st.session_state`` key of the annotator's name (signed in or given).
ANNOTATOR_KEY = "_annotator"


def workspace_path() -> str | None:
    """``--workspace`` from the script arguments, else ``$LABELER_WORKSPACE``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workspace", "-w")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.workspace or os.environ.get(ENV_WORKSPACE)
