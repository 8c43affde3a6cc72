"""The tables the libfuse binding keeps for what the kernel holds: inode numbers (`Inodes`) and
kept listings (`Listings`). A walk of a large project leaves hundreds of thousands in each, so
they are compact; these tests hold them to the kernel's protocol."""

from __future__ import annotations

import collections
import errno
import random

import mfusepy
import pytest

from blfs.fuse_kernel import ROOT, Inodes, Listings

MEMBERS = ["_info.json", "_product.json", "dwi.nii.gz", "dwi.bvals"]


def stale(inodes: Inodes, ino: int) -> bool:
    with pytest.raises(mfusepy.FuseOSError) as raised:
        inodes.path(ino)
    return raised.value.errno == errno.ESTALE


def test_a_name_keeps_its_number_while_the_kernel_holds_it():
    inodes = Inodes()
    (projects,) = inodes.remember(ROOT, ["projects"])
    first = inodes.remember(projects, ["Lab", "Open"])
    assert inodes.remember(projects, ["Lab", "Open"]) == first
    assert len({projects, *first}) == 3 and ROOT not in first
    assert inodes.path(ROOT) == "/"
    assert inodes.path(first[1]) == "/projects/Open"
    assert inodes.child(ROOT, "projects") == "/projects"
    assert inodes.child(first[0], "sub-01") == "/projects/Lab/sub-01"


def test_a_number_is_freed_once_every_lookup_is_forgotten():
    inodes = Inodes()
    ino = inodes.remember(ROOT, ["a"])[0]
    inodes.remember(ROOT, ["a", "a"])  # three lookups held
    freed: list[int] = []
    assert not inodes.forget(ino, 2, freed.append)
    assert inodes.path(ino) == "/a" and not freed
    assert inodes.forget(ino, 1, freed.append)
    assert freed == [ino]  # told, so that what is kept of its listing goes too
    assert stale(inodes, ino)


def test_unknown_numbers_are_stale_and_root_is_never_forgotten():
    inodes = Inodes()
    for unknown in (0, 2, 12345, 0xFFFFFFFF, 1 << 63):
        assert stale(inodes, unknown)
    assert not inodes.forget(ROOT, 1, pytest.fail)
    assert inodes.path(ROOT) == "/"


def test_inode_numbers_are_reused_after_the_kernel_forgets_them():
    """Numbers stay as many as the kernel holds: a forgotten one goes to the next new name,
    and a name forgotten and looked up again may get another number."""
    inodes = Inodes()
    a, b = inodes.remember(ROOT, ["a", "b"])
    assert inodes.forget(a, 1, lambda ino: None)
    (c,) = inodes.remember(ROOT, ["c"])
    assert c == a
    assert inodes.path(c) == "/c"
    (again,) = inodes.remember(ROOT, ["a"])
    assert again not in (b, c)
    assert inodes.path(again) == "/a" and inodes.path(b) == "/b"


def test_a_walk_forgotten_in_any_order_leaves_the_rest_exact():
    """A walk's worth of numbers, most forgotten in a random order and some looked up again:
    every number still held keeps its path and its name's number, and the numbers handed out
    never exceed the most ever held at once."""
    inodes = Inodes()
    parents = inodes.remember(ROOT, [f"{i:024x}" for i in range(500)])
    held = {ino: f"/{i:024x}" for i, ino in enumerate(parents)}
    for i, parent in enumerate(parents):
        for name, ino in zip(MEMBERS, inodes.remember(parent, MEMBERS), strict=True):
            held[ino] = f"/{i:024x}/{name}"
    most = max(held)
    order = [ino for ino in held if ino not in parents]  # a directory goes after its entries
    random.Random(7).shuffle(order)
    freed: list[int] = []
    for ino in order[: len(order) * 3 // 4]:
        assert inodes.forget(ino, 1, freed.append)
        del held[ino]
    assert freed == order[: len(order) * 3 // 4]
    for ino, path in held.items():
        assert inodes.path(ino) == path
        parent, _, name = path.rpartition("/")
        parent_ino = ROOT if not parent else parents[int(parent[1:], 16)]
        assert inodes.remember(parent_ino, [name]) == [ino]
    for i, parent in enumerate(parents):
        for ino in inodes.remember(parent, MEMBERS):
            assert ino <= most
            assert inodes.path(ino).startswith(f"/{i:024x}/")


def test_a_kept_listing_is_found_by_the_keys_it_shows_until_dropped():
    listings = Listings()
    project, other, product = ("project", "p1"), ("project", "p2"), ("product", "o1")
    entries = [(".", {}), ("..", {})]
    listings.keep(7, 100.0, listings.changes, entries, True, frozenset([project, product]))
    listings.keep(8, 101.0, listings.changes, list(entries), True, frozenset([project]))
    listings.keep(9, 102.0, listings.changes, list(entries), True, frozenset([other]))
    assert listings.entries(7) is entries and listings.date(7) == 100.0
    assert listings.showing(frozenset([project])) == {7, 8}
    assert listings.showing(frozenset([product, other])) == {7, 9}
    listings.drop(7)
    assert listings.date(7) is None and listings.entries(7) is None
    assert listings.showing(frozenset([project, product])) == {8}
    listings.drop(8)
    assert listings.showing(frozenset([project])) == set()
    assert listings.date(9) == 102.0 and listings.date(12345) is None


def test_a_listing_read_to_its_end_keeps_only_its_date_when_stable():
    listings = Listings()
    entries = [(".", {}), ("..", {})]
    listings.keep(3, 5.0, listings.changes, entries, True, frozenset(["projects"]))
    assert listings.read_out(3, entries)
    assert listings.entries(3) is None and listings.date(3) == 5.0
    assert listings.showing(frozenset(["projects"])) == {3}
    unstable = list(entries)
    listings.keep(4, 6.0, listings.changes, unstable, False, frozenset(["projects"]))
    assert not listings.read_out(4, unstable)


def test_a_listing_made_across_a_change_is_not_kept():
    listings = Listings()
    before = listings.changes
    listings.showing(frozenset(["datatypes"]))  # heard while the listing was being made
    entries = [(".", {}), ("..", {})]
    listings.keep(3, 5.0, before, entries, True, frozenset(["projects"]))
    assert not listings.read_out(3, entries)


def test_numbers_follow_the_kernels_lookups_and_forgets_in_any_interleaving():
    """Thousands of lookups and forgets in a random order, checked against what the kernel
    holds: each held number keeps its name and path, a held name keeps its number, and the
    numbers never outgrow the most held at once."""
    inodes = Inodes()
    rng = random.Random(19)
    held: dict[int, tuple[int, str, int]] = {}  # number -> (parent, name, lookups)
    numbers: dict[tuple[int, str], int] = {}
    entries: collections.Counter[int] = collections.Counter()  # held entries by parent
    most = 0
    for _ in range(10_000):
        if held and rng.random() < 0.45:
            ino = rng.choice(list(held))
            if entries[ino]:
                continue  # the kernel forgets a directory after its entries
            parent, name, lookups = held[ino]
            count = rng.randint(1, lookups)
            assert inodes.forget(ino, count, lambda ino: None) == (count == lookups)
            if count == lookups:
                del held[ino], numbers[parent, name]
                entries[parent] -= 1
            else:
                held[ino] = (parent, name, lookups - count)
            continue
        parent = rng.choice([ROOT, *held])
        names = [rng.choice(MEMBERS + ["sub-01", "dwi"]) for _ in range(rng.randint(1, 3))]
        for name, ino in zip(names, inodes.remember(parent, names), strict=True):
            assert numbers.setdefault((parent, name), ino) == ino
            assert ino not in held or held[ino][:2] == (parent, name)
            entries[parent] += ino not in held
            held[ino] = (parent, name, held.get(ino, (0, "", 0))[2] + 1)
        most = max(most, len(held))
        assert max(held) <= most + ROOT
    for ino, (parent, name, _) in held.items():
        assert inodes.path(ino) == inodes.child(parent, name)


def test_listings_showing_a_key_are_found_in_any_interleaving_of_keeps_and_drops():
    """Thousands of listings kept and dropped in a random order, some keys shown by one
    listing, some by most (as a project's is): a change of any key finds exactly the listings
    that show it, whether few or many."""
    listings = Listings()
    rng = random.Random(42)
    keys = ["projects", ("project", "p1"), ("project", "p2")] + [("product", i) for i in range(50)]
    shown: dict[int, frozenset] = {}
    for step in range(6000):
        ino = rng.randint(ROOT, 3000)
        if ino in shown and rng.random() < 0.4:
            listings.drop(ino)
            del shown[ino]
        else:
            sources = frozenset(
                [keys[1]] * (rng.random() < 0.9) + rng.sample(keys, rng.randint(0, 2))
            )
            entries = [(".", {}), ("..", {})]
            listings.keep(ino, float(step), listings.changes, entries, True, sources)
            assert listings.read_out(ino, entries)
            shown[ino] = sources
        if step % 500 == 0:
            for key in keys:
                assert listings.showing(frozenset([key])) == {
                    number for number, sources in shown.items() if key in sources
                }
    assert {ino for ino in range(3001) if listings.date(ino) is not None} == set(shown)
    for ino in list(shown):
        listings.drop(ino)
    assert listings.showing(frozenset(keys)) == set()
