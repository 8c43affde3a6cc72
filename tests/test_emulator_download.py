"""Dataset downloads from the emulator: the access rules in order, headers, archive bytes."""

from __future__ import annotations

import gzip
import io
import tarfile

import nibabel as nib
import pytest

DOWNLOAD = "/warehouse/dataset/download/"


@pytest.fixture
def token(emulator) -> str:
    return emulator.token()


def stored(emulator, project_name: str, **where) -> dict:
    project_id = next(p["_id"] for p in emulator.db("projects") if p["name"] == project_name)
    return next(
        d
        for d in emulator.db("datasets")
        if d["project"] == project_id
        and d["status"] == "stored"
        and all(d.get(k) == v for k, v in where.items())
    )


def archive_bytes(emulator, dataset_id: str) -> bytes:
    (path,) = (emulator.data / "archives").glob(f"{dataset_id}.*")
    return path.read_bytes()


@pytest.mark.parametrize(
    "project_name", ["Lab Private", "Open Diffusion", "Guest Study", "Old Project", "Twin Study"]
)
def test_readable_projects_download_byte_exact(emulator, token, project_name):
    dataset = stored(emulator, project_name, removed=False)
    reply = emulator.get(DOWNLOAD + dataset["_id"], token)
    assert reply.status_code == 200
    assert int(reply.headers["Content-Length"]) == dataset["size"] == len(reply.content)
    assert reply.content == archive_bytes(emulator, dataset["_id"])


@pytest.mark.parametrize("project_name", ["Hidden Lab", "Listed Lab"])
def test_unreadable_projects_are_403_err(emulator, token, project_name):
    dataset = stored(emulator, project_name, publications=[])
    reply = emulator.get(DOWNLOAD + dataset["_id"], token)
    assert reply.status_code == 403
    assert reply.json() == {"err": "you don't have access to the project that the dataset belongs"}


def test_publication_bypasses_the_project_acl(emulator, token):
    hidden = next(p["_id"] for p in emulator.db("projects") if p["name"] == "Hidden Lab")
    published = [d for d in emulator.db("datasets") if d["project"] == hidden and d["publications"]]
    assert published
    for dataset in published:
        assert emulator.get(DOWNLOAD + dataset["_id"], token).status_code == 200


def test_agreement_not_given_is_403_and_given_is_200(emulator, token):
    dataset = stored(emulator, "Agreement Study")
    reply = emulator.get(DOWNLOAD + dataset["_id"], token)
    assert reply.status_code == 403
    assert reply.json()["err"].startswith("You must agree to all data access agreements at ")
    assert reply.json()["err"].endswith(f"/project/{dataset['project']}")
    assert emulator.get(DOWNLOAD + dataset["_id"], emulator.token("alice")).status_code == 200


def test_no_token_and_expired_token_are_500(emulator):
    dataset = stored(emulator, "Open Diffusion")
    missing = emulator.get(DOWNLOAD + dataset["_id"])
    assert missing.status_code == 500
    assert missing.json() == {"message": "UnauthorizedError: No authorization token was found"}
    emulator.set(expire_tokens=True)
    expired = emulator.get(DOWNLOAD + dataset["_id"], emulator.token())
    assert expired.json() == {"message": "UnauthorizedError: jwt expired"}


def test_query_token_takes_precedence_over_the_header(emulator, token):
    dataset = stored(emulator, "Lab Private")
    good = emulator.get(DOWNLOAD + dataset["_id"], params={"at": token})
    assert good.status_code == 200
    bad = emulator.get(DOWNLOAD + dataset["_id"], token, params={"at": "garbage"})
    assert bad.json() == {"message": "UnauthorizedError: jwt malformed"}


def test_unknown_and_not_stored_datasets(emulator, token):
    unknown = emulator.get(DOWNLOAD + "f" * 24, token)
    assert unknown.status_code == 404
    assert unknown.json() == {"message": "couldn't find the dataset specified"}
    for status in ("failed", "storing"):
        dataset = next(d for d in emulator.db("datasets") if d["status"] == status)
        reply = emulator.get(DOWNLOAD + dataset["_id"], token)
        assert reply.status_code == 500
        assert reply.json() == {"message": f"status it not stored:{status}"}


def test_removed_but_stored_dataset_still_downloads(emulator, token):
    dataset = stored(emulator, "Lab Private", removed=True)
    assert emulator.get(DOWNLOAD + dataset["_id"], token).status_code == 200


def test_download_headers_like_brainlifes(emulator, token):
    dataset = stored(emulator, "Lab Private")
    reply = emulator.get(DOWNLOAD + dataset["_id"], token, headers={"Range": "bytes=0-99"})
    assert reply.status_code == 200
    assert len(reply.content) == dataset["size"]
    headers = reply.headers
    assert headers["Content-disposition"] == f"attachment; filename={dataset['_id']}.tar"
    assert "Content-Type" not in headers and "Content-Encoding" not in headers
    for absent in ("ETag", "Last-Modified", "Accept-Ranges", "Content-Range"):
        assert absent not in headers
    assert headers["Cache-Control"].startswith("no-store")


def test_head_gives_the_length_without_a_body(emulator, token):
    dataset = stored(emulator, "Lab Private")
    reply = emulator.http.head(
        f"{emulator.url}{DOWNLOAD}{dataset['_id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 200
    assert int(reply.headers["Content-Length"]) == dataset["size"]
    assert reply.content == b""


def test_current_archives_are_plain_gnu_tar_with_members_at_the_root(emulator):
    """`size` is the archive's length, or for objects stored on S3 their files' total."""
    for dataset in emulator.db("datasets"):
        if dataset["status"] != "stored":
            continue
        stored = data = archive_bytes(emulator, dataset["_id"])
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        else:
            assert len(data) % 10240 == 0
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
        files = sum(m.size for m in members if m.isfile())
        assert dataset["size"] == (
            files if dataset["storage"] in ("s3fs", "s3fs-embargo") else len(stored)
        )
        assert members
        assert all(not m.name.startswith(("/", "./")) and ".." not in m.name for m in members)
        assert all(m.isfile() or m.isdir() for m in members)


def test_legacy_gzip_archives_exist_in_lab_private(emulator, token):
    lab = next(p["_id"] for p in emulator.db("projects") if p["name"] == "Lab Private")
    legacy = [
        d
        for d in emulator.db("datasets")
        if d["project"] == lab
        and d["status"] == "stored"
        and archive_bytes(emulator, d["_id"])[:2] == b"\x1f\x8b"
    ]
    assert legacy
    reply = emulator.get(DOWNLOAD + legacy[0]["_id"], token)
    assert reply.headers["Content-disposition"].endswith(".tar.gz")
    assert reply.content[:2] == b"\x1f\x8b"
    assert "Content-Encoding" not in reply.headers


def test_datatype_files_are_where_brainlife_puts_them(emulator, token):
    names = {t["_id"]: t["name"] for t in emulator.db("datatypes")}
    expected = {
        "neuro/anat/t1w": {"t1.nii.gz"},
        "neuro/anat/t2w": {"t2.nii.gz"},
        "neuro/dwi": {"dwi.nii.gz", "dwi.bvals", "dwi.bvecs"},
        "neuro/func/task": {"bold.nii.gz", "events.tsv"},
        "neuro/tractprofile": {"profiles"},
        "neuro/freesurfer": {"output"},
        "neuro/wmc": {"classification.mat", "tracts"},
    }
    seen = set()
    for dataset in emulator.db("datasets"):
        name = names[dataset["datatype"]]
        if dataset["status"] != "stored" or name in seen:
            continue
        data = archive_bytes(emulator, dataset["_id"])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            top = {m.name.split("/")[0] for m in tar.getmembers()}
        assert top == expected[name], name
        seen.add(name)
    assert seen == set(expected)


def test_nifti_images_load_with_nibabel(emulator, token):
    dataset = stored(emulator, "Lab Private")
    reply = emulator.get(DOWNLOAD + dataset["_id"], token)
    with tarfile.open(fileobj=io.BytesIO(reply.content)) as tar:
        image_name = next(n for n in tar.getnames() if n.endswith(".nii.gz"))
        raw = tar.extractfile(image_name).read()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
    assert image.get_fdata().shape == image.shape
    assert dataset["_id"].encode() in bytes(image.header["descrip"])


def test_each_download_bumps_download_count(emulator, token):
    dataset = stored(emulator, "Twin Study")

    def count() -> int:
        reply = emulator.get(
            "/warehouse/dataset",
            token,
            params={"find": {"_id": dataset["_id"]}, "select": "project download_count"},
        )
        return reply.json()["datasets"][0]["download_count"]

    before = count()
    emulator.get(DOWNLOAD + dataset["_id"], token)
    assert count() == before + 1
