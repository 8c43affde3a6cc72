"""Safe, stable, collision-proof directory names (DESIGN §1.1)."""

from __future__ import annotations

from blfs.names import pattern_safe, safe_name, unique_names

A = "aaaaaaaa00000000000000a1"
B = "bbbbbbbb00000000000000b2"
C = "cccccccc00000000000000c3"


def test_safe_name_replaces_slash_and_nul_and_never_gives_dot_names():
    assert safe_name("a/b\0c") == "a_b_c"
    assert safe_name("") == "unnamed"
    assert safe_name(None) == "unnamed"
    assert safe_name(".") == "_"
    assert safe_name("..") == "__"
    assert safe_name("...") == "..."
    assert safe_name(42) == "42"


def test_safe_name_fits_255_bytes_without_splitting_a_character_and_keeps_the_suffix():
    name = safe_name("é" * 300)
    assert len(name.encode()) <= 255
    assert set(name) == {"é"}
    suffixed = safe_name("x" * 300, " (abcdef12)")
    assert len(suffixed.encode()) == 255
    assert suffixed.endswith("x (abcdef12)")


def test_unique_names_are_plain_unless_shared():
    named = unique_names([(A, "Lab", 1), (B, "Study", 2)])
    assert named.by_name == {"Lab": 1, "Study": 2}


def test_siblings_sharing_a_name_each_get_their_id_prefix():
    named = unique_names([(A, "Twin", 1), (B, "Twin", 2), (C, "Other", 3)])
    assert named.by_name == {"Twin (aaaaaaaa)": 1, "Twin (bbbbbbbb)": 2, "Other": 3}


def test_a_later_duplicate_does_not_rename_the_others():
    before = unique_names([(A, "Twin", 1), (B, "Twin", 2), (C, "Other", 3)]).by_name
    after = unique_names([(A, "Twin", 1), (B, "Twin", 2), (C, "Other", 3), ("d" * 24, "Twin", 4)])
    assert before.items() <= after.by_name.items()
    assert after.by_name["Twin (dddddddd)"] == 4


def test_names_that_become_equal_once_made_safe_collide_too():
    named = unique_names([(A, "a/b", 1), (B, "a_b", 2)])
    assert set(named.by_name) == {"a_b (aaaaaaaa)", "a_b (bbbbbbbb)"}


def test_equal_id_prefixes_fall_back_to_the_full_id():
    other = "aaaaaaaa00000000000000ff"
    named = unique_names([(A, "Twin", 1), (other, "Twin", 2)])
    assert named.by_name == {f"Twin ({A})": 1, f"Twin ({other})": 2}


def test_a_reserved_name_is_never_given_to_a_record():
    named = unique_names([(A, "publication.json", 1)], reserved=["publication.json"])
    assert named.by_name == {"publication.json (aaaaaaaa)": 1}


def test_every_record_is_also_reachable_by_its_full_id():
    named = unique_names([(A, "Twin", 1), (B, "Twin", 2)])
    assert named.get(A) == 1
    assert named.get("Twin (bbbbbbbb)") == 2
    assert named.get("Twin") is None
    assert A not in named.by_name


def test_no_name_holds_a_glob_metacharacter_and_brackets_become_parentheses():
    assert safe_name("T1 [pilot] *final?") == "T1 (pilot) _final_"
    named = unique_names([(A, "Study [v2]", 1), (B, "Study (v2)", 2), (C, "Rest*", 3)])
    assert named.by_name == {"Study (v2) (aaaaaaaa)": 1, "Study (v2) (bbbbbbbb)": 2, "Rest_": 3}
    assert named.get(A) == 1
    assert not any(set(name) & set("[]*?") for name in named.by_name)


def test_server_named_files_keep_their_names_unless_a_pattern_would_misread_them():
    shown = pattern_safe(["a(1).txt", "a[1].txt", "b*.csv", "plain"], " (aaaaaaaa)")
    assert shown == {
        "a(1).txt": "a(1).txt",
        "plain": "plain",
        "a(1).txt (aaaaaaaa)": "a[1].txt",
        "b_.csv": "b*.csv",
    }
