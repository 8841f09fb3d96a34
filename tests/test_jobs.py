"""The command contract, through ./spark-submit.sh as a user runs it."""

from __future__ import annotations

import subprocess  # nosec B404: runs the project's own wrapper, no shell
from pathlib import Path

import pytest
from conftest import TEST_JVM_OPTIONS

from poimatch import schema as S

REPO = Path(__file__).resolve().parents[1]


def _submit(*args: str) -> subprocess.CompletedProcess[str]:
    # the suite's JVM options (C1 alone, the serial GC): a short job on tiny data costs
    # far less CPU; what the wrapper hands spark-submit is tested in tests/test_session.py
    options = ("--driver-java-options", TEST_JVM_OPTIONS)
    return subprocess.run(
        [str(REPO / "spark-submit.sh"), "--driver-memory", "1g", *options, *args, "--env", "ci"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )


def test_evaluate_prints_iou_line(tmp_path: Path) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_text(
        ",".join((*S.INPUT_COLUMNS, S.POI))
        + "\n"
        + "\n".join(
            f"{i},N{i},48.1,2.1,,,,,FR,,,,{poi}" for i, poi in (("a", "P"), ("b", "P"), ("c", "Q"))
        )
        + "\n",
        encoding="utf-8",
    )
    sub = tmp_path / "sub.csv"
    # a: {a,b} exact; b: {b} vs {a,b} = 1/2; c: {c,a} vs {c} = 1/2
    sub.write_text("id,matches\na,a b\nb,b\nc,c a\n", encoding="utf-8")
    done = _submit("jobs/evaluate.py", "--submission", str(sub), "--truth", str(truth))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"iou={(1 + 0.5 + 0.5) / 3:.4f}" in done.stdout.splitlines()


def test_bad_input_fails_with_named_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,latitude\nx,y,1\n", encoding="utf-8")
    done = _submit("jobs/ingest.py", "--input", str(bad), "--set", f"storage.root={tmp_path}")
    assert done.returncode == 2
    # spark-submit's Python runner merges the job's stderr into its stdout
    assert "error: " in done.stdout + done.stderr
    assert "missing required column(s) ['longitude']" in done.stdout + done.stderr


@pytest.mark.parametrize("override", ["spark.shuffle_partitions=0", "blocking.k_nearst=3"])
def test_bad_config_fails_naming_the_key(override: str) -> None:
    done = _submit("jobs/evaluate.py", "--submission", "x", "--truth", "y", "--set", override)
    assert done.returncode == 2
    key = override.split("=", maxsplit=1)[0]
    assert f"invalid configuration: {key}" in done.stdout + done.stderr


def test_match_fails_on_an_unusable_file_with_status_2(tmp_path: Path) -> None:
    # one file of tests/awkward.py's corpus through the real wrapper (the whole corpus
    # runs in-process in tests/test_awkward_uploads.py): a named error, status 2, no output
    bad = tmp_path / "semicolons.csv"
    bad.write_text("id;name;latitude;longitude\na;A;1;2\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    done = _submit(
        "jobs/match.py",
        *("--input", str(bad), "--output", str(out)),
        *("--set", f"storage.root={tmp_path / 'lake'}"),
    )
    assert done.returncode == 2, (done.stdout + done.stderr)[-2000:]
    assert "error: " in done.stdout + done.stderr
    assert "missing required column(s)" in done.stdout + done.stderr
    assert not out.exists()
    assert not (tmp_path / "lake").exists()
