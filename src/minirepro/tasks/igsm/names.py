"""English names for the layers of a structure graph.

A *world* is a chain of categories, outermost first (Zoo → Enclosure → Animal → Bone, as in
the paper's example); each category has a pool of item names. A problem draws ``n_layer``
consecutive categories of one world and ``width`` items of each, so every item name in a
problem is unique and reads as English: "Riverside Zoo's Penguin Beach".

The worlds are our own; the reference generator draws from a larger hand-written list.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WORLDS", "World"]


@dataclass(frozen=True)
class World:
    """A chain of categories and their item names.

    Attributes:
        name: Short id of the world.
        categories: Category names, outermost first (one per possible layer).
        items: For each category, the item names (at least the largest width used).
    """

    name: str
    categories: tuple[str, ...]
    items: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.items):
            raise ValueError(f"world {self.name}: one item pool per category is needed")
        seen: set[str] = set(self.categories)
        for pool in self.items:
            for item in pool:
                if item in seen:
                    raise ValueError(f"world {self.name}: name {item!r} is used twice")
                seen.add(item)


WORLDS: tuple[World, ...] = (
    World(
        "zoo",
        ("Zoo", "Enclosure", "Animal", "Bone"),
        (
            ("Riverside Zoo", "Hilltop Zoo", "Lakeshore Zoo", "Oakwood Zoo", "Sunset Zoo"),
            ("Penguin Beach", "Reptile House", "Bird Aviary", "Monkey Forest", "Lion Den"),
            ("Giraffe", "Penguin", "Zebra", "Parrot", "Tortoise"),
            ("Skull", "Rib", "Femur", "Spine", "Jaw"),
        ),
    ),
    World(
        "school",
        ("District", "School", "Classroom", "Backpack"),
        (
            ("North District", "South District", "East District", "West District",
             "Central District"),
            ("Maple High", "Cedar Elementary", "Pine Academy", "Birch Middle", "Elm Prep"),
            ("Art Room", "Music Room", "Science Lab", "Film Studio", "Reading Room"),
            ("Canvas Bag", "Sling Bag", "Daypack", "Duffel Bag", "Tote Bag"),
        ),
    ),
    World(
        "city",
        ("City", "Market", "Stall", "Crate"),
        (
            ("Port City", "Stone City", "Gold City", "Iron City", "Rain City"),
            ("Night Market", "Fish Market", "Flower Market", "Farm Market", "Book Market"),
            ("Fruit Stall", "Spice Stall", "Bread Stall", "Cheese Stall", "Tea Stall"),
            ("Apple Crate", "Melon Crate", "Onion Crate", "Lemon Crate", "Pear Crate"),
        ),
    ),
)  # fmt: skip
