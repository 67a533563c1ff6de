"""Where this rank sits: which city, which rank inside the city.

Groups are built from this (city id, rank in city), never from contiguous rank blocks, so a
launcher may number ranks however it likes.
"""

from __future__ import annotations

from dataclasses import dataclass


class TopologyError(ValueError):
    """The environment does not describe a valid cities x ranks layout."""


@dataclass(frozen=True)
class Topology:
    city: int
    num_cities: int
    local_rank: int
    ranks_per_city: int

    def __post_init__(self) -> None:
        if self.num_cities < 1 or self.ranks_per_city < 1:
            raise TopologyError(f"need at least 1 city and 1 rank per city, got {self}")
        if not 0 <= self.city < self.num_cities:
            raise TopologyError(f"city {self.city} outside 0..{self.num_cities - 1}")
        if not 0 <= self.local_rank < self.ranks_per_city:
            raise TopologyError(f"local rank {self.local_rank} outside 0..{self.ranks_per_city - 1}")

    @property
    def world_size(self) -> int:
        return self.num_cities * self.ranks_per_city

    @property
    def global_rank(self) -> int:
        return self.city * self.ranks_per_city + self.local_rank

    def rank_of(self, city: int, local_rank: int) -> int:
        return city * self.ranks_per_city + local_rank

    def city_ranks(self, city: int) -> list[int]:
        """Global ranks of `city`, in local-rank order (what every per-city group is built from)."""
        return [self.rank_of(city, k) for k in range(self.ranks_per_city)]

    def to_env(self) -> dict[str, str]:
        return {
            "CROSSCITY_CITY": str(self.city),
            "CROSSCITY_NUM_CITIES": str(self.num_cities),
            "CROSSCITY_LOCAL_RANK": str(self.local_rank),
            "CROSSCITY_RANKS_PER_CITY": str(self.ranks_per_city),
            "RANK": str(self.global_rank),
            "WORLD_SIZE": str(self.world_size),
        }
