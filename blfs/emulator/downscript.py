"""`POST /warehouse/dataset/downscript`: the bash script `bl bids download` runs (API §2).

Reproduces the warehouse's script line for line in what it does: per object, a `curl | tar -x`
into `proj-<P>/sub-<S>[.ses-<E>]/dt-<datatype>[.tag-…][.run-…].id-<ID>`, its `_info.json`, and
under `proj-<P>/bids/derivatives/<pipeline>/…` a symlink per datatype `bids` map (or the meta as
JSON for `_meta_`) named
`sub-…[_ses-…][_space-…][_run-…][_acq-…][_tag-…][_task-…]_desc-<ID>_<dest>`
(entities abridged here).
Its quirks are kept: every object is a "derivative" (uploads and imports of pipeline `upload`), a
map's `src` is quoted inside `$(ls -d "…")` (so a glob is not expanded there), and `_meta_` is
written only for objects with provenance.
"""

from __future__ import annotations

import hashlib
import json
import re

CLOSING = """
echo
echo "All requested objects successfully downloaded!!"
echo
"""


def is_import(task: dict) -> bool:
    """The warehouse's `isimporttask`: a validator, or a task without inputs."""
    service = task.get("service") or ""
    if "brainlife/validator-" in service or "brain-life/validator-" in service:
        return True
    deps, deps_config = task.get("deps"), task.get("deps_config")
    return (not deps and not deps_config) or (deps == [] and deps_config == [])


def _json_echo(value: dict) -> str:
    """`"` + JSON.stringify(value) with every `"` escaped + `"`, as the script's echo takes it."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return '"' + text.replace('"', '\\"') + '"'


def dataset_to_filename(dataset: dict, datatype: dict) -> str:
    path = "dt-" + datatype["name"].replace("/", "-")
    for tag in dataset.get("datatype_tags") or []:
        if tag:
            path += ".tag-" + tag.replace(".", "-")
    if dataset["meta"].get("run"):
        path += ".run-" + str(dataset["meta"]["run"])
    return path + ".id-" + dataset["_id"]


def project_header(project: dict, authors: list[str], site: str) -> str:
    """README and bids/dataset_description.json of one project."""
    root = f"./proj-{project['_id']}"
    heredoc = hashlib.sha1(project["_id"].encode()).hexdigest()[:11]
    description = {
        "BIDSVersion": "1.0.1",
        "Name": project.get("name"),
        "Authors": authors,
        "ReferencesAndLinks": [f"{site}/project/{project['_id']}"],
    }
    return (
        f"mkdir -p {root}/bids\n"
        f"cat << '__{heredoc}__' > {root}/README\n"
        f"{project.get('name')}\n\n{site}/project/{project['_id']}\n\n{project.get('desc')}"
        f"\n__{heredoc}__\n"
        f"echo {_json_echo(description)} > {root}/bids/dataset_description.json\n"
    )


def dataset_lines(dataset: dict, datatype: dict, site: str, auth: bool) -> str:
    meta = dict(dataset["meta"])
    root = f"./proj-{dataset['project']}"
    path = root
    if meta.get("subject"):
        path += f"/sub-{meta['subject']}"
    if meta.get("session"):
        path += f".ses-{meta['session']}"
    path += "/" + dataset_to_filename(dataset, datatype)
    curl = 'curl -H "$auth" ' if auth else "curl "
    script = f'mkdir -p "{path}"\n'
    script += f"echo downloading dataset:{dataset['_id']} to {path}\n"
    script += f'{curl}{site}/api/warehouse/dataset/download/{dataset["_id"]} | tar -C "{path}" -x\n'
    info = f'{site}/api/warehouse/dataset?single=true\\&find=\'\\{{"_id":"{dataset["_id"]}"\\}}\''
    script += f"{curl}{info} > '{path}/_info.json'\n"
    bids = datatype.get("bids")
    if not bids:
        return script + "#no bids mapping\n\n"
    task = (dataset.get("prov") or {}).get("task")
    pipeline = "upload"
    if task and not is_import(task):
        pipeline = task["service"].replace("/", ".")
    bidspath = f"{root}/bids/derivatives/{pipeline}"
    if meta.get("subject"):
        bidspath += f"/sub-{meta['subject']}"
    if meta.get("session"):
        bidspath += f"/ses-{meta['session']}"
    bidspath += f"/{bids.get('derivatives')}"
    script += f'mkdir -p "{bidspath}"\n'
    for entry in bids.get("maps") or []:
        keywords = f"sub-{meta.get('subject', 'undefined')}"
        for key, field in (("ses", "session"), ("space", "Space"), ("run", "run"), ("acq", "acq")):
            if meta.get(field):
                keywords += f"_{key}-{meta[field]}"
        for tag in dataset.get("datatype_tags") or []:
            if tag:
                keywords += "_tag-" + tag.replace("_", "")
        if meta.get("TaskName"):
            keywords += "_task-" + re.sub(r"[^0-9a-zA-Z]", "", str(meta["TaskName"]))
        dest = f"{keywords}_desc-{dataset['_id']}_{entry['dest']}"
        if entry["src"] == "_meta_":
            if dataset.get("prov"):
                meta["BrainlifeURL"] = (
                    f"{site}/project/{dataset['project']}/dataset/{dataset['_id']}"
                )
                script += f'echo {_json_echo(meta)} > "{bidspath}/{dest}"\n'
            continue
        up = "../" * (len(bidspath.split("/")) - 1)
        source = f"{path}/{entry['src']}"
        script += f'[ -f {source} ] && ln -sf {up}$(ls -d "{source}") "{bidspath}/{dest}"\n'
    return script + "\n"
