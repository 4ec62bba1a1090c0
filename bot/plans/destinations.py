"""Which PBX destination an admin means by "IVR", "Sales", "очередь" or "201".

Resolution, in order: the exact number; a kind word when only one destination
of that kind exists; a name (case-insensitive, Cyrillic included), exact
before partial. Several candidates are a choice to offer, none is an error
listing what exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pbx.models import Destination, DestinationType

KIND_WORDS: dict[str, tuple[DestinationType, ...]] = {
    "ivr": (DestinationType.IVR_MENU,),
    "menu": (DestinationType.IVR_MENU,),
    "меню": (DestinationType.IVR_MENU,),
    "голосовое меню": (DestinationType.IVR_MENU,),
    "queue": (DestinationType.QUEUE,),
    "очередь": (DestinationType.QUEUE,),
    "employee": (DestinationType.SIP, DestinationType.USER),
    "сотрудник": (DestinationType.SIP, DestinationType.USER),
    "extension": (DestinationType.SIP, DestinationType.USER),
}
# System destinations are reached by number ("busy", "hangup"), never by kind.
_ROUTABLE = {
    DestinationType.IVR_MENU,
    DestinationType.QUEUE,
    DestinationType.SIP,
    DestinationType.USER,
    DestinationType.EXTERNAL,
    DestinationType.CONFERENCE,
    DestinationType.DIALPLAN_APPLICATION,
    DestinationType.MODULES,
}
_NUMBER_SUFFIX = re.compile(r"\s*<[^>]*>\s*$")


class DestinationError(LookupError):
    """`code` is "no_destination" (candidates: what exists) or "ambiguous_destination"."""

    def __init__(self, code: str, query: str, candidates: list[Destination]):
        self.code = code
        self.query = query
        self.candidates = candidates
        names = ", ".join(f"{label(d)} ({d.value})" for d in candidates[:10])
        super().__init__(f"{code}: {query!r}; {names}")


def label(destination: Destination) -> str:
    """The name without MikoPBX's trailing "<number>"."""
    return _NUMBER_SUFFIX.sub("", destination.name).strip() or destination.value


def _fold(text: str) -> str:
    return " ".join(text.casefold().replace("ё", "е").split())


@dataclass
class DestinationIndex:
    destinations: list[Destination]
    _by_value: dict[str, Destination] = field(init=False)

    def __post_init__(self) -> None:
        self._by_value = {d.value: d for d in self.destinations}

    def resolve(self, query: str) -> Destination:
        text = query.strip()
        if text in self._by_value:
            return self._by_value[text]
        folded = _fold(text)
        routable = [d for d in self.destinations if d.type in _ROUTABLE]
        kinds = KIND_WORDS.get(folded)
        if kinds is not None:
            of_kind = [d for d in routable if d.type in kinds]
            if len(of_kind) == 1:
                return of_kind[0]
            if of_kind:
                raise DestinationError("ambiguous_destination", text, of_kind)
        exact = [d for d in routable if _fold(label(d)) == folded]
        if len(exact) == 1:
            return exact[0]
        if exact:
            raise DestinationError("ambiguous_destination", text, exact)
        partial = [d for d in routable if folded and folded in _fold(label(d))]
        if len(partial) == 1:
            return partial[0]
        if partial:
            raise DestinationError("ambiguous_destination", text, partial)
        raise DestinationError("no_destination", text, routable)
