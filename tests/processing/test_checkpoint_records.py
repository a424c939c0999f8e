"""Ledger records of tasks that store their result themselves (TaskRecord): CheckpointStore.save_record,
completed_tasks(verify_record), and StageRunner.run redoing exactly the tasks whose record no longer
matches."""
import json
import logging

import numpy as np

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.processing.checkpoint import CheckpointStore, TaskRecord, read_rank_ledger, task_key
from lensing_ssc.processing.runner import StageRunner, Task


def record_of(task_id):
    return TaskRecord({"crc32": 1000 + task_id, "note": f"task {task_id}"})


def save_records(root, rank, task_ids, interval=1):
    """One rank of one run: record the given tasks and flush, as StageRunner does."""
    store = CheckpointStore(root, "stage", rank)
    for task_id in task_ids:
        store.save_record(task_id, record_of(task_id), interval)
    store.flush()
    return store


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_records_are_flushed_every_interval_without_files(tmp_path):
    store = CheckpointStore(tmp_path, "stage", rank=2)
    ledger_path = tmp_path / "stage" / "rank00002.jsonl"
    store.save_record(4, record_of(4), interval=2)
    assert not ledger_path.exists()
    store.save_record(9, record_of(9), interval=2)
    lines = [json.loads(line) for line in ledger_path.read_text().splitlines()]
    assert all(line["format"] == 1 for line in lines)
    assert {line["task"]: line["entry"] for line in lines} == {
        "00000004": {"record": {"crc32": 1004, "note": "task 4"}},
        "00000009": {"record": {"crc32": 1009, "note": "task 9"}}}
    assert not (tmp_path / "stage" / "tasks").exists()  # a record has no file


def test_records_are_kept_when_the_callback_confirms_them(tmp_path):
    store = save_records(tmp_path, 0, range(4))
    seen = {}

    def verify(key, record):
        seen[key] = record
        return True

    done = store.completed_tasks(verify)
    assert sorted(done) == [task_key(i) for i in range(4)]
    assert seen == {task_key(i): {"crc32": 1000 + i, "note": f"task {i}"} for i in range(4)}  # JSON round trip
    assert done[task_key(2)] == {"record": {"crc32": 1002, "note": "task 2"}}


def test_records_the_callback_rejects_are_dropped_with_a_warning_naming_the_task(tmp_path, caplog):
    store = save_records(tmp_path, 0, range(4))
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.checkpoint"):
        done = store.completed_tasks(lambda key, record: record["crc32"] != 1002)
    assert sorted(done) == [task_key(i) for i in (0, 1, 3)]
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "task 00000002" in warned[0] and "redone" in warned[0]


def test_records_without_a_callback_are_all_dropped_with_warnings(tmp_path, caplog):
    store = save_records(tmp_path, 0, [0, 1])
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.checkpoint"):
        assert store.completed_tasks() == {}
    warned = warnings_of(caplog)
    assert len(warned) == 2 and "task 00000000" in warned[0] and "task 00000001" in warned[1]


def test_records_and_npz_results_mixed_in_one_store(tmp_path, caplog):
    store = CheckpointStore(tmp_path, "stage", 0)
    for task_id in range(6):  # even tasks: npz results; odd tasks: records
        if task_id % 2:
            store.save_record(task_id, record_of(task_id), interval=1)
        else:
            store.save_task(task_id, {"values": np.full(10, float(task_id))}, interval=1)
    store.flush()
    (tmp_path / "stage" / "tasks" / f"{task_key(2)}.npz").unlink()  # one npz lost
    asked = []

    def verify(key, record):
        asked.append(key)
        return key != task_key(5)  # one record that no longer matches

    with caplog.at_level(logging.WARNING, logger="lensing_ssc.checkpoint"):
        done = store.completed_tasks(verify)
    assert sorted(asked) == [task_key(i) for i in (1, 3, 5)]  # the callback sees records only
    assert sorted(done) == [task_key(i) for i in (0, 1, 3, 4)]
    warned = " ".join(warnings_of(caplog))
    assert "task 00000002" in warned and "task 00000005" in warned
    # merged into merged.json by rank 0, the same entries survive the next start-up
    store.consolidate(done)
    merged = json.loads((tmp_path / "stage" / "merged.json").read_text())["tasks"]
    assert merged[task_key(3)] == {"record": {"crc32": 1003, "note": "task 3"}}
    assert "file" in merged[task_key(4)]
    assert sorted(CheckpointStore(tmp_path, "stage", 0).completed_tasks(lambda key, record: True)) == sorted(done)
    np.testing.assert_array_equal(store.load_task(4)["values"], np.full(10, 4.0))


# -- StageRunner ---------------------------------------------------------------------------------

NTASKS = 6


def run_stage(tmp_path, verify_record):
    """One serial run of a stage whose tasks write their own files (results/{task}.txt) and return a
    TaskRecord of what they wrote; returns (report, ids of the tasks processed)."""
    config = ProcessingConfig(output_dir=str(tmp_path), pipeline={"memory_monitoring": False})
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    processed = []

    def process(task):
        processed.append(task.task_id)
        text = f"result of task {task.task_id}"
        (results / f"{task.task_id}.txt").write_text(text)
        return TaskRecord({"text": text})

    tasks = [Task(i) for i in range(NTASKS)]
    report = StageRunner(config, "toy").run(tasks, process, {"ntasks": NTASKS}, verify_record=verify_record)
    return report, processed


def test_a_second_run_redoes_exactly_the_task_whose_record_fails(tmp_path):
    def stored_result_matches(key, record):
        path = tmp_path / "results" / f"{int(key)}.txt"
        return path.is_file() and path.read_text() == record["text"]

    report, processed = run_stage(tmp_path, stored_result_matches)
    assert (report.tasks_done, report.tasks_skipped, processed) == (NTASKS, 0, list(range(NTASKS)))
    assert not (tmp_path / "checkpoints" / "toy" / "tasks").exists()  # no npz written for a record
    ledger = read_rank_ledger(tmp_path / "checkpoints" / "toy" / "rank00000.jsonl")[0]
    assert ledger[task_key(3)] == {"record": {"text": "result of task 3"}}

    (tmp_path / "results" / "3.txt").write_text("changed since")
    report, processed = run_stage(tmp_path, stored_result_matches)
    assert (report.tasks_done, report.tasks_skipped, processed) == (1, NTASKS - 1, [3])
    assert (tmp_path / "results" / "3.txt").read_text() == "result of task 3"

    report, processed = run_stage(tmp_path, stored_result_matches)  # everything matches now
    assert (report.tasks_done, report.tasks_skipped, processed) == (0, NTASKS, [])


def test_a_run_without_verify_record_redoes_every_recorded_task(tmp_path):
    run_stage(tmp_path, lambda key, record: True)
    report, processed = run_stage(tmp_path, None)
    assert (report.tasks_done, report.tasks_skipped, processed) == (NTASKS, 0, list(range(NTASKS)))
