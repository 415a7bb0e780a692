"""The frozen conformance files: made by their recipes, decoded as their manifests say, and
covering every spec section, error code and required feature."""

import copy

import pytest

from nncodec_rd.conformance import generate, manifest


@pytest.fixture(scope="module")
def vectors():
    return manifest.load(manifest.VECTORS_MANIFEST)


@pytest.fixture(scope="module")
def invalid():
    return manifest.load(manifest.INVALID_MANIFEST)


def test_the_encoder_still_writes_every_frozen_file():
    """A change of the encoder's output fails here instead of silently regenerating a vector."""
    assert generate.frozen_differences(generate.VECTORS_FOLDER, generate.VALID) == []
    assert generate.frozen_differences(generate.INVALID_FOLDER, generate.INVALID) == []


def test_a_changed_recipe_is_reported(tmp_path):
    recipe = generate.VALID[0]
    (tmp_path / recipe.file_name).write_bytes(recipe.build() + b"\0")
    problems = generate.frozen_differences(tmp_path, [recipe])
    assert len(problems) == 1 and "version 2" in problems[0]


def test_manifests_list_every_file_once(vectors, invalid):
    for document, recipes, key in ((vectors, generate.VALID, "vectors"),
                                   (invalid, generate.INVALID, "files")):
        files = [entry["file"] for entry in document[key]]
        assert sorted(files) == sorted(recipe.file_name for recipe in recipes)
        assert len(set(files)) == len(files)


def test_valid_vectors_decode_to_their_manifest_entries(vectors):
    """Both decoders, the manifest's tensor hashes, and the features computed from the bytes."""
    for entry in vectors["vectors"]:
        data = (generate.VECTORS_FOLDER / entry["file"]).read_bytes()
        assert manifest.sha256(data) == entry["file_sha256"], entry["name"]
        decoded = manifest.decode_both(data)
        assert manifest.tensor_entries(decoded) == entry["tensors"], entry["name"]
        features = manifest.features_of(data, decoded)
        assert sorted(features) == entry["features"], entry["name"]
        assert manifest.sections_of(features, entry["name"]) == entry["sections"], entry["name"]


def test_invalid_files_give_their_code_in_both_decoders(invalid):
    for entry in invalid["files"]:
        data = (generate.INVALID_FOLDER / entry["file"]).read_bytes()
        assert manifest.sha256(data) == entry["file_sha256"], entry["name"]
        assert manifest.error_codes_of_both(data) == (entry["error_code"],) * 2, entry["name"]
        assert manifest.error_name(entry["error_code"]) == entry["error_name"]


def test_every_section_code_and_feature_is_covered(vectors, invalid):
    assert manifest.coverage_gaps(vectors, invalid) == []


def test_coverage_check_names_what_is_missing(vectors, invalid):
    without_codebooks = copy.deepcopy(vectors)
    without_codebooks["vectors"] = [e for e in vectors["vectors"]
                                    if "grid:codebook" not in e["features"]]
    without_padding = copy.deepcopy(invalid)
    without_padding["files"] = [e for e in invalid["files"] if e["error_name"] != "nonzero_padding"]
    gaps = manifest.coverage_gaps(without_codebooks, without_padding)
    assert "spec section 6.2 has no valid vector" in gaps
    assert "error 12 nonzero_padding has no invalid file" in gaps
    assert "feature grid:codebook has no vector" in gaps


def test_spec_sections_and_codes_are_read_from_the_spec():
    sections = manifest.spec_sections()
    assert {"4.7", "6.4", "7.6", "9", "A"} <= set(sections)
    codes = manifest.spec_error_codes()
    assert codes[1] == "bad_magic" and codes[30] == "limit_exceeded" and 10 not in codes
