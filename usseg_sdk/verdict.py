"""Pass/fail per frame from per-class defect areas: the one decision rule of ``usseg predict`` and
``deploy/line_example.py``.

A frame fails when, for any defect class, the total area of its regions of at least ``min_region`` pixels exceeds
that class's limit; a class without its own limit takes ``default`` (0 unless set: any such region fails the frame).

Example:
    >>> rule = parse_area_limits(["scratches=50", "patches=200"], min_region=10)
    >>> rule.limit("scratches"), rule.limit("inclusion")
    (50, 0)
    >>> parse_area_limits(["100"]).limit("inclusion")
    100
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from usseg_sdk.errors import UssegError


class VerdictRuleError(UssegError, ValueError):
    """A pass/fail rule is malformed or names a class the model does not have."""


@dataclass(frozen=True)
class AreaRule:
    """Largest total area (px) of each defect class a passing frame may hold; see the module docstring."""

    limits: dict[str, int] = field(default_factory=dict)
    default: int = 0
    min_region: int = 0

    def limit(self, class_name: str) -> int:
        return self.limits.get(class_name, self.default)

    def check_classes(self, class_names: Iterable[str]) -> None:
        """VerdictRuleError when a limit names a class the model does not have."""
        unknown = sorted(set(self.limits) - set(class_names))
        if unknown:
            raise VerdictRuleError(f"area limits name unknown classes {unknown}; the model's classes: "
                                   f"{list(class_names)}")

    def to_dict(self) -> dict[str, Any]:
        return {"limits": dict(self.limits), "default": self.default, "min_region": self.min_region}


@dataclass(frozen=True)
class Verdict:
    """The decision for one frame: ``passed``, why not (one reason a failing class), and the area of each class."""

    passed: bool
    reasons: list[str]
    areas: dict[str, int]

    @property
    def label(self) -> str:
        return "pass" if self.passed else "fail"


def decide(result: Any, rule: AreaRule) -> tuple[Verdict, list]:
    """The verdict of one ``Segmentation`` and the defect regions it counted (those of ``rule.min_region`` px)."""
    regions = result.defects(min_area=rule.min_region)
    areas: dict[str, int] = {}
    for d in regions:
        areas[d.class_name] = areas.get(d.class_name, 0) + int(d.area)
    reasons = [f"{name}: {area} px > {rule.limit(name)} px" for name, area in sorted(areas.items())
               if area > rule.limit(name)]
    return Verdict(passed=not reasons, reasons=reasons, areas=areas), regions


def parse_area_limits(items: Iterable[str], min_region: int = 0) -> AreaRule:
    """``["scratches=50", "patches=200"]`` or ``["scratches=50,patches=200"]``: per-class limits; a bare number
    (``"100"``) is the limit of every class without its own."""
    limits: dict[str, int] = {}
    default = 0
    for item in (part.strip() for text in items for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        if not value.strip().isdigit() or (sep and not name.strip()):
            raise VerdictRuleError(f"area limit {item!r}: expected CLASS=PIXELS (e.g. scratches=50) or PIXELS for "
                                   "every class")
        if sep:
            limits[name.strip()] = int(value)
        else:
            default = int(value)
    return AreaRule(limits=limits, default=default, min_region=min_region)
