"""The offline English sentences from pydoc_data: counts, disjoint pools, determinism."""

import platform

import pytest

from nncodec_rd.torch.sentences import (
    CODE_CHARACTERS,
    SOURCE_DESCRIPTION,
    all_sentences,
    calibration_sentences,
    evaluation_sentences,
)


def test_there_are_enough_prose_sentences():
    sentences = all_sentences()
    assert len(sentences) >= 256 + 512
    assert sentences == sorted(set(sentences))
    for sentence in sentences:
        assert 40 <= len(sentence) <= 200 and sentence[0].isupper() and sentence[-1] in ".!?"
        assert CODE_CHARACTERS.isdisjoint(sentence) and "  " not in sentence


def test_default_counts():
    assert len(calibration_sentences()) == 256 and len(evaluation_sentences()) == 512
    assert len(set(calibration_sentences())) == 256 and len(set(evaluation_sentences())) == 512


def test_the_pools_never_overlap_whatever_the_counts():
    largest_calibration = _largest(calibration_sentences)
    largest_evaluation = _largest(evaluation_sentences)
    assert set(largest_calibration).isdisjoint(largest_evaluation)
    assert len(largest_calibration) + len(largest_evaluation) == len(all_sentences())


def test_smaller_counts_are_prefixes_and_calls_repeat():
    assert calibration_sentences(10) == calibration_sentences(256)[:10]
    assert evaluation_sentences(10) == evaluation_sentences(512)[:10]
    assert evaluation_sentences() == evaluation_sentences()
    assert calibration_sentences(0) == []


def test_asking_for_too_many_or_a_negative_count_raises():
    with pytest.raises(ValueError, match="only"):
        calibration_sentences(len(all_sentences()))
    with pytest.raises(ValueError, match="only"):
        evaluation_sentences(len(all_sentences()))
    with pytest.raises(ValueError):
        calibration_sentences(-1)


def test_returned_lists_are_copies():
    first = calibration_sentences(5)
    first.clear()
    assert len(calibration_sentences(5)) == 5


def test_the_source_names_the_python_version():
    assert platform.python_version() in SOURCE_DESCRIPTION and "pydoc_data" in SOURCE_DESCRIPTION


def _largest(function):
    """The whole pool behind ``function``: the largest count that does not raise."""
    low, high = 0, len(all_sentences())
    while low < high:
        middle = (low + high + 1) // 2
        try:
            function(middle)
            low = middle
        except ValueError:
            high = middle - 1
    return function(low)
