"""Benchmark loaders on fixtures the tests write in the public schemas, and on the real files when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tango_steps.tasks.benchmarks import (
    BENCHMARKS,
    PROCESSBENCH_SUBSETS,
    BenchmarkError,
    load_benchmark,
    load_processbench,
)
from tango_steps.tasks.grading import is_correct

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "benchmarks"

ROWS = {
    "gsm8k": [{"question": "Q1?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}],
    "math500": [
        {"problem": "P?", "solution": "so $\\boxed{\\frac{1}{2}}$.", "answer": "mangled", "unique_id": "test/x/1.json"}
    ],
    "aime24": [{"id": 60, "problem": "P?", "solution": "...", "answer": "204", "url": "u"}],
    "aime25": [{"problem": "P?", "answer": "70"}],
    "amc23": [{"id": 0, "problem": "P?", "answer": 27.0, "url": "u"}, {"id": 1, "question": "Q?", "answer": 0.5}],
    "olympiadbench": [{"id": 1606, "question": "Q?", "final_answer": ["$3$", "$5$"], "solution": ["..."]}],
}
GOLDS = {"gsm8k": ["1007"], "math500": ["\\frac{1}{2}"], "aime24": ["204"], "aime25": ["70"], "amc23": ["27", "0.5"],
         "olympiadbench": ["3, 5"]}  # fmt: skip


def _write(root: Path, name: str, rows: list, raw_lines: list[str] = ()) -> Path:
    rel = {"gsm8k": "gsm8k/test.jsonl", "math500": "math500/test.jsonl", "aime24": "aime24/test.jsonl",
           "aime25": "aime25/test.jsonl", "amc23": "amc23/test.jsonl",
           "olympiadbench": "olympiadbench/test.jsonl"}[name]  # fmt: skip
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([json.dumps(r) for r in rows] + list(raw_lines)) + "\n")
    return path


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_format_and_gold_rule(tmp_path, name):
    _write(tmp_path, name, ROWS[name])
    problems, stats = load_benchmark(name, str(tmp_path))
    assert [p.gold for p in problems] == GOLDS[name]
    assert stats.kept == stats.rows == len(ROWS[name]) and stats.skipped == 0
    assert all(p.benchmark == name and p.id.startswith(name) and p.question for p in problems)


def test_path_may_name_the_file_and_limit(tmp_path):
    f = _write(tmp_path, "amc23", ROWS["amc23"])
    problems, _ = load_benchmark("amc23", str(f), limit=1)
    assert [p.id for p in problems] == ["amc23-0"]


def test_bad_rows_name_file_and_line_or_are_counted(tmp_path):
    f = _write(tmp_path, "gsm8k", ROWS["gsm8k"], ['{"question": "no answer"}', "{not json", '{"answer": "#### 3"}'])
    with pytest.raises(BenchmarkError, match=rf"{f}, line 2: missing field 'answer'"):
        load_benchmark("gsm8k", str(tmp_path))
    problems, stats = load_benchmark("gsm8k", str(tmp_path), on_bad_row="skip")
    assert len(problems) == 1 and stats.skipped == 3 and stats.rows == 4
    assert "line 3" in stats.reasons[1] and "line 4: missing field question" in stats.reasons[2]


def test_unknown_names_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(BenchmarkError, match="unknown benchmark 'gsm9k'; known: gsm8k, math500"):
        load_benchmark("gsm9k", str(tmp_path))
    with pytest.raises(BenchmarkError, match="unknown ProcessBench subset 'x'; known: gsm8k, math"):
        load_processbench("x", str(tmp_path))
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark("aime25", str(tmp_path))
    monkeypatch.delenv("TANGO_BENCHMARKS", raising=False)
    with pytest.raises(BenchmarkError, match="TANGO_BENCHMARKS"):
        load_benchmark("aime25")


def test_processbench(tmp_path):
    d = tmp_path / "processbench"
    d.mkdir()
    rows = [
        {
            "id": "gsm8k-0",
            "generator": "g",
            "problem": "P",
            "steps": ["a", "b"],
            "final_answer_correct": False,
            "label": 1,
        },
        {"id": "gsm8k-1", "generator": "g", "problem": "P", "steps": ["a"], "final_answer_correct": True, "label": -1},
        {"id": "gsm8k-2", "problem": "P", "steps": ["a"], "label": 3},
    ]
    (d / "gsm8k.json").write_text(json.dumps(rows))
    with pytest.raises(BenchmarkError, match=r"sample 2: label 3 outside -1\.\.0"):
        load_processbench("gsm8k", str(tmp_path))
    samples, stats = load_processbench("gsm8k", str(tmp_path), on_bad_row="skip")
    assert [s.label for s in samples] == [1, -1] and stats.skipped == 1
    assert samples[0].steps == ["a", "b"] and not samples[0].final_answer_correct


@pytest.mark.skipif(not SHARED.exists(), reason=f"shared benchmark files not present at {SHARED}")
@pytest.mark.parametrize("name", BENCHMARKS)
def test_real_files_load_and_gold_answers_grade_as_correct(name):
    problems, stats = load_benchmark(name, str(SHARED))
    expected = {"gsm8k": 1319, "math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "olympiadbench": 675}
    assert stats.kept == expected[name] and stats.skipped == 0
    assert len({p.id for p in problems}) == len(problems)
    for p in problems[:20]:  # the gold answer, boxed, is graded correct against itself
        assert is_correct(f"\\boxed{{{p.gold}}}", p.gold), (p.id, p.gold)


@pytest.mark.skipif(not SHARED.exists(), reason=f"shared benchmark files not present at {SHARED}")
@pytest.mark.parametrize("subset", PROCESSBENCH_SUBSETS)
def test_real_processbench_files(subset):
    samples, stats = load_processbench(subset, str(SHARED))
    assert stats.kept == {"gsm8k": 400, "math": 1000, "olympiadbench": 1000, "omnimath": 1000}[subset]
    assert any(s.label == -1 for s in samples) and any(s.label >= 0 for s in samples)
