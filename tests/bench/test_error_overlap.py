"""bench/error_overlap.py: how often a student repeats its teacher's mistakes."""

import numpy as np

from bench.error_overlap import folder_split, overlap


def test_a_student_that_repeats_one_error_and_fixes_another_is_counted_so():
    truth = np.array([0, 1, 2, 3, 4, 5])
    teacher = np.array([0, 1, 2, 3, 9, 8])  # wrong on the last two
    student = np.array([0, 1, 2, 7, 9, 5])  # repeats one, fixes the other, a new error of its own
    assert overlap(teacher, student, truth) == {
        "top1": 4 / 6,
        "agrees with teacher": 4 / 6,
        "teacher's errors repeated": 1 / 2,
        "teacher's errors fixed": 1 / 2,
    }


def test_the_test_split_follows_the_models_class_order(tmp_path):
    for name, count in (("coat", 2), ("bag", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            (tmp_path / name / f"{i}.png").write_bytes(b"")
    split = folder_split(tmp_path, ["coat", "bag"])
    assert [p.split("/")[-2] for p in split.uris] == ["coat", "coat", "bag"]
    assert split.targets.tolist() == [0, 0, 1]
