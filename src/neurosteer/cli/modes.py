"""How the CLI chooses a command's mode: by a flag that names it.

A mode is a variant of one command's job on the same MODEL or folder: `discover --relp`
(RelP instead of the contrastive discovery), `optimize FOLDER --show` and `--export` (read a
finished search instead of running one). A flag names the mode, so `--help` lists it and a
command line says which mode it means; a mode is never inferred from which other options
happen to be present. Separate jobs are subcommands (`organism train`, `organism export`,
`models fetch`). The one spelling that inferred a mode (`discover MODEL --prompt ...` without
`--relp`) keeps working for one release, with a `DeprecationWarning` naming the new one.
"""

from __future__ import annotations

import logging
import warnings

logger = logging.getLogger(__name__)


def deprecated_spelling(old: str, new: str) -> None:
    """Warn that the command line spelled `old` is now spelled `new`: a `DeprecationWarning`
    (for callers and tests) and a warning in the log (shown on stderr by the CLI)."""
    message = f"{old} is deprecated and will be refused in the next release; {new}"
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    logger.warning(message)
