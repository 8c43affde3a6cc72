"""The `sub-<subject>/[ses-<session>/]<datatype>/<tags>/<object-id>/` tree of a set of data-objects.

Built in memory from one paged dataset query (DESIGN §1): directory names come from each record's
own fields only, so an object keeps its path whatever else is added. Two values that become the
same name (a subject `a/b` next to `a_b`) share a directory; the object ids below stay distinct.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from blfs.names import safe_name

log = logging.getLogger("blfs")

# Fields of a data-object the tree and `_info.json` need (the API requires `project` in a select);
# `download_count` is left out because it changes on every download.
DATASET_SELECT = (
    "project publications meta datatype datatype_tags tags size status status_msg removed "
    "create_date update_date remove_date desc user_id prov storage archive_task_id"
)
NO_SUBJECT = "sub-nosubject"
UNTAGGED = "untagged"


def timestamp(value: Any) -> float:
    """Epoch seconds of an API date (ISO string or epoch number); 0 when absent or unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return 0.0
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return 0.0


@dataclass(slots=True)  # one per directory: tens of thousands in a big project
class Branch:
    """A directory of the tree: named children (branches, or dataset records at the leaves),
    the newest object's creation below it, and how many objects are below it."""

    children: dict[str, Branch | Mapping[str, Any]] = field(default_factory=dict)
    mtime: float = 0.0
    objects: int = 0


def subject_dir(meta: Mapping[str, Any]) -> str:
    subject = meta.get("subject")
    return safe_name(f"sub-{subject}") if subject not in (None, "") else NO_SUBJECT


def tags_dir(record: Mapping[str, Any]) -> str:
    """datatype_tags then tags joined by '.', a '.' inside a tag becoming '-'."""
    tags = [*(record.get("datatype_tags") or []), *(record.get("tags") or [])]
    parts = [str(tag).replace(".", "-") for tag in tags if str(tag)]
    return safe_name(".".join(parts)) if parts else UNTAGGED


def datatype_dir(record: Mapping[str, Any], datatypes: Mapping[str, Mapping[str, Any]]) -> str:
    """The datatype's name with '/' as '-' (its id if the datatype is unknown)."""
    datatype_id = str(record.get("datatype") or "")
    name = (datatypes.get(datatype_id) or {}).get("name") or datatype_id
    return safe_name(str(name).replace("/", "-"))


def object_path(
    record: Mapping[str, Any],
    datatypes: Mapping[str, Mapping[str, Any]],
    names: dict[Any, str] | None = None,
) -> list[str]:
    """The directory names from the tree's root down to the object's own directory (`names`:
    those made so far for the same values, which most objects of a project share)."""
    names = {} if names is None else names
    meta = record.get("meta") or {}
    subject, session = meta.get("subject"), meta.get("session")
    tags = (tuple(record.get("datatype_tags") or ()), tuple(record.get("tags") or ()))
    datatype = record.get("datatype")
    path = [_named(names, ("sub", subject), lambda: subject_dir(meta))]
    if session not in (None, ""):
        path.append(_named(names, ("ses", session), lambda: safe_name(f"ses-{session}")))
    path.append(_named(names, ("dt", datatype), lambda: datatype_dir(record, datatypes)))
    path.append(_named(names, tags, lambda: tags_dir(record)))
    path.append(safe_name(record["_id"]))
    return path


def _named(names: dict[Any, str], value: Any, make: Callable[[], str]) -> str:
    try:
        return names[value]
    except KeyError:
        name = names[value] = make()
        return name
    except TypeError:  # a value that cannot be a key (a subject given as a list)
        return make()


def build_tree(
    records: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
    datatypes: Mapping[str, Mapping[str, Any]],
) -> Branch:
    """The tree of `(head, record)` pairs, sorted by name: each object placed by its head (the
    fields `object_path` reads) holds `record` at its leaf. A branch's mtime is the newest
    object below it."""
    root, names = Branch(), {}
    for fields, record in records:
        path = object_path(fields, datatypes, names)
        created = timestamp(fields.get("create_date"))
        node, above = root, []
        for name in path[:-1]:
            above.append(node)
            child = node.children.setdefault(name, Branch())
            if not isinstance(child, Branch):
                log.warning("object %s hidden: its path clashes with an object", fields["_id"])
                break
            node = child
        else:
            if node.children.setdefault(path[-1], record) is not record:
                log.warning("object %s hidden: its path clashes with a directory", fields["_id"])
                continue
            for branch in (*above, node):
                branch.mtime = max(branch.mtime, created)
                branch.objects += 1
    _sort(root)
    return root


def _sort(branch: Branch) -> None:
    branch.children = dict(sorted(branch.children.items()))
    for child in branch.children.values():
        if isinstance(child, Branch):
            _sort(child)


def records(branch: Branch) -> Iterator[Mapping[str, Any]]:
    """The data-object records of a tree, in path order."""
    for child in branch.children.values():
        if isinstance(child, Branch):
            yield from records(child)
        else:
            yield child
