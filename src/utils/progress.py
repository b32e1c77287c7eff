"""The progress line of a long stage (encode, split, evaluate): shown only when the work takes
longer than DELAY seconds, so the novel's stages stay quiet and a 1G-character corpus says how
far it got."""

from __future__ import annotations

from tqdm.auto import tqdm

DELAY = 3.0


def bar(total: int, desc: str, unit: str = "B", enabled: bool = True) -> tqdm:
    """A tqdm bar over `total` units (bytes by default) that appears after DELAY seconds."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        delay=DELAY,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=1.0,
    )
