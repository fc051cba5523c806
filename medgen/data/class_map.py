"""Merge the classes of a datalist into coarser ones, e.g. ``{tumor: [glioma, meningioma, pituitary],
notumor: [notumor]}``: a bundle config applies it after :func:`medgen.data.datalist.resolve_datalist`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medgen.data.datalist import DatalistError, limit_per_class, summary_table, write_datalist

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")


def merge_classes(datalist: dict[str, Any], class_map: Mapping[str, Sequence[str]] | None,
                  max_items_per_class: int | None = None, seed: int = 0,
                  out: str | Path | None = None) -> dict[str, Any]:
    """A copy of ``datalist`` whose classes are the keys of ``class_map`` (in its order) and whose labels are
    re-numbered to them. Source classes named in no group are dropped (logged); None leaves the datalist as is.

    ``max_items_per_class`` trims each merged class of every split again (a merged class of three source
    classes would otherwise hold three times as many items); ``out`` writes the merged datalist JSON.
    """
    if not class_map:
        return datalist
    old = list(datalist.get("classes") or [])
    if not old:
        raise DatalistError("the datalist has no 'classes' list, so class names cannot be merged; "
                            "rebuild it with `medgen data index`")
    new_of_old: dict[int, int] = {}
    for new_label, (name, members) in enumerate(class_map.items()):
        members = [members] if isinstance(members, str) else list(members)
        if not members:
            raise DatalistError(f"class_map group {name!r} is empty; list the source classes it merges")
        for member in members:
            if member not in old:
                raise DatalistError(f"class_map group {name!r} names {member!r}, which is not a class of the "
                                    f"data; the data's classes are {old}")
            if old.index(member) in new_of_old:
                raise DatalistError(f"class {member!r} is in two class_map groups; put it in one")
            new_of_old[old.index(member)] = new_label
    dropped = [c for i, c in enumerate(old) if i not in new_of_old]
    if dropped:
        logger.info("class_map drops class(es) %s", dropped)
    merged = {k: v for k, v in datalist.items() if k not in SPLITS}
    merged["classes"] = list(class_map)
    merged["class_map"] = {k: ([v] if isinstance(v, str) else list(v)) for k, v in class_map.items()}
    for split in SPLITS:
        if split not in datalist:
            continue
        items = [{**it, "label": new_of_old[int(it["label"])], "source_class": old[int(it["label"])]}
                 for it in datalist[split] if int(it["label"]) in new_of_old]
        merged[split] = limit_per_class(items, max_items_per_class, seed)
    logger.info("merged classes:\n%s", summary_table(merged))
    if out is not None:
        write_datalist(merged, out)
    return merged
