"""Per-instance flag bits of the ``flags`` array (uint8, one value per instance).

=============  =====  ==========================================================
name           value  meaning
=============  =====  ==========================================================
MERGED_SPLIT   1      the mask comes from splitting a blob that held several
                      animals (the animals touched or overlapped)
AT_BORDER      2      the mask touches the frame border (the animal may be cut off)
EXTRA          4      the frame held more blobs than animals expected; this
                      instance was kept among the largest
=============  =====  ==========================================================

Empty instance slots hold 0.
"""

from __future__ import annotations

import numpy as np

MERGED_SPLIT = 1
AT_BORDER = 2
EXTRA = 4

#: Bit value -> short name (the per-animal table uses ``merged`` and ``at_border``).
FLAG_NAMES: dict[int, str] = {MERGED_SPLIT: "merged", AT_BORDER: "at_border", EXTRA: "extra"}


def decode_flags(value: int) -> tuple[str, ...]:
    """Names of the bits set in one flag value, in bit order, e.g. ``3 -> ("merged", "at_border")``.

    Raises:
        ValueError: for bits that have no meaning.
    """
    value = int(value)
    unknown = value & ~sum(FLAG_NAMES)
    if value < 0 or unknown:
        raise ValueError(f"flag value {value} has unknown bits {unknown:#x}")
    return tuple(name for bit, name in FLAG_NAMES.items() if value & bit)


def flag_arrays(flags: np.ndarray) -> dict[str, np.ndarray]:
    """One bool array per flag name, same shape as ``flags``."""
    flags = np.asarray(flags)
    return {name: (flags & bit) > 0 for bit, name in FLAG_NAMES.items()}
