"""A cluster-to-class mapping written by hand: ``--map 3=scratches,7=scratches`` (or class ids, ``3=1``).

A line engineer who has looked at a model's cluster overlays can name clusters without labelled frames. Clusters
not named go to the background class. Class names come from ``--class-names`` / ``labels.txt``; without them, the
names in the map make the classes, after ``background`` (class 0). Every mistake is a CalibrationError saying
what was wrong: an entry that is not ``CLUSTER=CLASS``, a cluster the model does not have, a class that is not
defined, a cluster named twice with different classes, unnamed clusters without a background class.

Example:
    >>> mapping, names = parse_manual_mapping("3=scratches,1=scratches,2=pits", n_clusters=5)
    >>> mapping.tolist(), names
    ([0, 1, 2, 1, 0], ['background', 'scratches', 'pits'])
"""

from __future__ import annotations

import numpy as np

from usseg_sdk.errors import CalibrationError


def parse_manual_mapping(text: str, n_clusters: int, class_names: list[str] | None = None,
                         background: int | None = 0) -> tuple[np.ndarray, list[str]]:
    """(int64 (n_clusters,) cluster -> class, class names) from ``text``; see the module docstring."""
    entries = _entries(text, n_clusters)
    names = list(class_names) if class_names else _names_from(entries, background)
    mapping = np.full(n_clusters, -1, np.int64)
    for cluster, token in entries:
        cls = _class_id(token, names)
        if mapping[cluster] not in (-1, cls):
            raise CalibrationError(f"--map names cluster {cluster} twice, as both {names[mapping[cluster]]!r} and "
                                   f"{names[cls]!r}")
        mapping[cluster] = cls
    unnamed = [int(k) for k in np.flatnonzero(mapping < 0)]
    if unnamed and background is None:
        raise CalibrationError(f"--map leaves clusters {unnamed} unnamed and there is no background class "
                               "(--background -1) to give them; name every cluster or set --background")
    if background is not None and not 0 <= background < len(names):
        raise CalibrationError(f"--background {background} is not a class id (0..{len(names) - 1}: {names})")
    mapping[mapping < 0] = background if background is not None else 0
    return mapping, names


def _entries(text: str, n_clusters: int) -> list[tuple[int, str]]:
    entries = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        cluster_text, sep, token = (s.strip() for s in item.partition("="))
        if not sep or not cluster_text or not token:
            raise CalibrationError(f"--map entry {item!r} is not CLUSTER=CLASS (e.g. 3=scratches or 3=1)")
        try:
            cluster = int(cluster_text)
        except ValueError:
            raise CalibrationError(f"{cluster_text!r} in --map entry {item!r} is not a cluster id "
                                   f"(0..{n_clusters - 1})") from None
        if not 0 <= cluster < n_clusters:
            raise CalibrationError(f"cluster {cluster} in --map is out of range: the model has {n_clusters} clusters "
                                   f"(0..{n_clusters - 1})")
        entries.append((cluster, token))
    if not entries:
        raise CalibrationError("--map is empty: give CLUSTER=CLASS pairs, e.g. 3=scratches,7=scratches")
    return entries


def _names_from(entries: list[tuple[int, str]], background: int | None) -> list[str]:
    """Without class names: ``background`` (class 0, when there is one) then the map's names in order, or
    ``class_i`` for class ids."""
    named = [t for _, t in entries if not t.isdigit()]
    if named:
        return list(dict.fromkeys(["background", *named] if background is not None else named))
    top = max([int(t) for _, t in entries] + [background or 0])
    return [f"class_{i}" for i in range(top + 1)]


def _class_id(token: str, names: list[str]) -> int:
    if token.isdigit():
        cls = int(token)
        if cls >= len(names):
            raise CalibrationError(f"class id {cls} in --map is out of range (0..{len(names) - 1}: {names})")
        return cls
    if token not in names:
        raise CalibrationError(f"class {token!r} in --map is not one of the classes {names}")
    return names.index(token)
