"""Instructions per query direction / task (lame_runtime.inputs.instructions): written at training,
picked at serving, never a majority vote; old artifacts with one "query" instruction still work."""

from __future__ import annotations

import pytest

from lame_runtime.errors import InputError
from lame_runtime.inputs.instructions import Spelling, check, modality, pick, summarise

T2I, I2T = "Find the image that matches.", "Find the true statement."


def rows(t2i: int, i2t: int):
    """Training rows as (query modality, target modality, task, instruction); more i2t rows
    than t2i, as in the bundled digits data, so a majority vote would pick the wrong one."""
    return [("text", "image", "read.t2i", T2I)] * t2i + [("image", "text", "read.i2t", I2T)] * i2t


def test_modality():
    assert modality("a", None) == "text"
    assert modality(None, "x.png") == "image" and modality("", "x.png") == "image"
    assert modality("a", "x.png") == "text+image"


def test_summarise_is_per_direction_not_a_majority_vote():
    table = summarise(rows(t2i=1, i2t=5))
    assert table["query"] is None  # two instructions: none is "the" query instruction
    assert table["directions"] == {"image->text": I2T, "text->image": T2I}
    assert table["tasks"] == {"read.i2t": I2T, "read.t2i": T2I}
    assert pick(table, "text") == T2I and pick(table, "image") == I2T
    assert pick(table, "text", task="read.i2t") == I2T


def test_ambiguous_directions_require_an_instruction():
    table = summarise(rows(1, 1) + [("text", "text", "qa", "Answer the question.")])
    assert table["directions"]["text->text"] == "Answer the question."
    with pytest.raises(InputError, match="several instructions were trained for text queries"):
        pick(table, "text")
    assert pick(table, "image") == I2T
    with pytest.raises(InputError, match="no training direction starts from text\\+image"):
        pick(table, "text+image")
    mixed = summarise([("text", "image", "a", T2I), ("text", "image", "a", "Other.")])
    assert mixed["directions"]["text->image"] is None and mixed["tasks"]["a"] is None
    with pytest.raises(InputError, match="task 'a' was trained with several"):
        pick(mixed, "text", task="a")
    with pytest.raises(InputError, match="unknown task 'b'"):
        pick(mixed, "text", task="b")


def test_a_known_target_decides_where_the_query_modality_does_not():
    table = summarise(rows(1, 1) + [("text", "text", "qa", "Answer the question.")])
    # several directions start from text: the target picks the one trained for it
    assert pick(table, "text", target="image") == T2I and pick(table, "text", target="text") == (
        "Answer the question."
    )
    # nothing starts from text+image: the one instruction trained for finding images
    assert pick(table, "text+image", target="image") == T2I
    # two instructions end at text (image->text and text->text): still refused, never a vote
    with pytest.raises(InputError, match="no training direction starts from text\\+image"):
        pick(table, "text+image", target="text")
    # a direction trained without an instruction: none, not the neighbour's
    bare = summarise([("text", "image", None, None), ("image", "text", None, I2T)])
    assert pick(bare, "text+image", target="image") is None


def test_errors_name_the_callers_spelling():
    table = summarise(rows(1, 1))
    with pytest.raises(InputError, match='pass instruction=... \\("" for none\\) or task=...'):
        pick(table, "text+image")
    flags = Spelling(instruction="--instruction TEXT", empty="''", task="--task NAME")
    with pytest.raises(InputError) as err:
        pick(table, "text+image", spelling=flags)
    assert "pass --instruction TEXT ('' for none) or --task NAME" in str(err.value)
    assert "instruction=" not in str(err.value)
    mixed = summarise([("text", "image", "a", T2I), ("text", "image", "a", "Other.")])
    with pytest.raises(InputError, match="pass --instruction TEXT explicitly"):
        pick(mixed, "text", task="a", spelling=flags)


def test_no_instruction_and_single_instruction():
    bare = summarise([("text", "image", None, None)] * 3)
    assert bare["query"] is None and bare["directions"] == {"text->image": ""}
    assert pick(bare, "text") is None
    single = summarise(rows(2, 0))
    assert single["query"] == T2I and pick(single, "text") == T2I


def test_old_artifacts_keep_their_query_instruction():
    old = {"query": I2T, "document": None, "tasks": {"read.t2i": T2I}}
    assert pick(old, "text") == I2T and pick(old, "image") == I2T
    assert pick(old, "text", task="read.t2i") == T2I
    assert pick({}, "text") is None and pick(None, "image") is None


def test_check_names_bad_structure():
    assert check(None, "m") == {}
    with pytest.raises(InputError, match="m: 'instructions' must be an object"):
        check(["q"], "m")
    with pytest.raises(InputError, match="instructions.directions must map"):
        check({"directions": {"text->image": 3}}, "m")
    with pytest.raises(InputError, match="instructions.query must be a string"):
        check({"query": 1}, "m")
