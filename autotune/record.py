"""Record: turn the tuner's decisions into the typed profile (``twinkle.kernel.profile``).

A ``Draft`` is a decision in the making (the end-to-end choice may still change its winner); ``profile_of`` writes
the final records once; ``combination_profile`` is the in-memory profile that applies one combination of choices
during the search.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from twinkle.kernel.profile import ClassRef, Decision, Environment, Profile, Target


@dataclass
class Draft:
    """A decision in the making: the tuner's verdict at one signature, which the end-to-end choice may change."""

    kind: str
    name: str
    module_class: ClassRef | None
    decision: Decision

    @property
    def key(self) -> str:
        """Its name in combinations: the target (and class), and the signature."""
        cls = f"[{self.module_class.qualname}]" if self.module_class else ""
        return f"{self.name}{cls} @ {self.decision.text}"


def combination_profile(drafts: list[Draft], choices: dict[str, str | None], env: Environment, device: str,
                        mode: str, input_set: str) -> Profile:
    """An in-memory profile that applies exactly ``choices`` (draft key -> candidate id or None)."""
    grouped: dict[tuple[str, str, str | None], list[Decision]] = {}
    refs: dict[tuple[str, str, str | None], ClassRef | None] = {}
    for d in drafts:
        winner = choices.get(d.key)
        key = (d.kind, d.name, d.module_class.path if d.module_class else None)
        refs[key] = d.module_class
        grouped.setdefault(key, []).append(dataclasses.replace(
            d.decision, winner=winner, basis="search" if winner else None, reason="a combination tried end to end"))
    targets = tuple(Target(k[0], k[1], tuple(ds), refs[k]) for k, ds in grouped.items())
    return Profile(mode=mode, device=device, environment=env, targets=targets, sets=(input_set,),
                   end_to_end={input_set: {"chosen": "search"}}, origin=f"<combination on {input_set}>")


def targets_of(drafts: list[Draft]) -> tuple[Target, ...]:
    """The profile's targets: per layer kernel_name and module class, or per function, its decisions."""
    grouped: dict[tuple[str, str, str | None], list[Draft]] = {}
    for d in drafts:
        grouped.setdefault((d.kind, d.name, d.module_class.path if d.module_class else None), []).append(d)
    return tuple(Target(kind, name, tuple(d.decision for d in ds), ds[0].module_class)
                 for (kind, name, _), ds in grouped.items())
