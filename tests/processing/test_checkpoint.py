"""CheckpointStore (ledgers, manifest, npz results) and the atomic-write helpers it relies on."""
import hashlib
import json
import logging
import zipfile

import numpy as np
import pytest

from lensing_ssc import __version__
from lensing_ssc.core.errors import ConfigError, ResourceError, exit_code_for
from lensing_ssc.io.atomic import atomic_output, ensure_free_disk, write_json_atomic
from lensing_ssc.processing.checkpoint import CheckpointStore, read_rank_ledger, task_key


def result_of(task_id):
    return {"values": np.sin(np.arange(50) * (task_id + 1)), "count": np.array([task_id], dtype=np.int64)}


def run_tasks(root, rank, task_ids, interval=1, compress=False):
    """One rank of one run: save the given tasks and flush, as StageRunner does."""
    store = CheckpointStore(root, "stage", rank, compress=compress)
    for task_id in task_ids:
        store.save_task(task_id, result_of(task_id), interval)
    store.flush()
    return store


def sha256_of(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- saving and ledgers ------------------------------------------------------------------------

def test_ledger_appended_every_interval_with_checksums(tmp_path):
    store = CheckpointStore(tmp_path, "stage", rank=3)
    ledger_path = tmp_path / "stage" / "rank00003.jsonl"
    store.save_task(7, result_of(7), interval=2)
    assert (tmp_path / "stage" / "tasks" / "00000007.npz").is_file()
    assert not ledger_path.exists()
    store.save_task(12, result_of(12), interval=2)
    lines = [json.loads(line) for line in ledger_path.read_text().splitlines()]
    assert [(line["format"], line["task"]) for line in lines] == [(1, "00000007"), (1, "00000012")]
    for line in lines:
        assert line["entry"]["file"] == f"{line['task']}.npz"
        assert line["entry"]["sha256"] == sha256_of(tmp_path / "stage" / "tasks" / line["entry"]["file"])
    store.save_task(13, result_of(13), interval=2)
    assert "00000013" not in read_rank_ledger(ledger_path)[0]
    store.flush()
    entries, problems = read_rank_ledger(ledger_path)
    assert sorted(entries) == ["00000007", "00000012", "00000013"] and problems == []
    assert ledger_path.read_text().count("\n") == 3  # appended, never rewritten
    assert not list((tmp_path / "stage").rglob("*.inprogress"))


def test_task_keys_sort_in_task_order():
    assert task_key(5) == "00000005" and task_key(np.int64(12)) == "00000012"
    assert task_key("sheet-20") == "sheet-20"
    assert sorted(task_key(i) for i in (100, 9, 20)) == [task_key(9), task_key(20), task_key(100)]


@pytest.mark.parametrize("compress, zip_method", [(False, zipfile.ZIP_STORED), (True, zipfile.ZIP_DEFLATED)])
def test_npz_round_trip(tmp_path, compress, zip_method):
    arrays = {"map": np.zeros((64, 64), dtype=np.float32), "ids": np.arange(10), "flag": np.array(True)}
    store = CheckpointStore(tmp_path, "stage", rank=0, compress=compress)
    store.save_task(1, arrays, interval=1)
    loaded = store.load_task(1)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype
    with zipfile.ZipFile(tmp_path / "stage" / "tasks" / "00000001.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zip_method}


def test_compressed_checkpoint_is_smaller(tmp_path):
    arrays = {"map": np.zeros(100_000)}
    CheckpointStore(tmp_path / "plain", "stage", 0).save_task(0, arrays, 1)
    CheckpointStore(tmp_path / "packed", "stage", 0, compress=True).save_task(0, arrays, 1)
    plain = (tmp_path / "plain" / "stage" / "tasks" / "00000000.npz").stat().st_size
    packed = (tmp_path / "packed" / "stage" / "tasks" / "00000000.npz").stat().st_size
    assert packed < plain / 10


# -- completed tasks ---------------------------------------------------------------------------

def test_completed_tasks_drops_missing_and_corrupt_results(tmp_path, caplog):
    store = run_tasks(tmp_path, 0, range(5))
    tasks_dir = tmp_path / "stage" / "tasks"
    (tasks_dir / "00000001.npz").unlink()
    with open(tasks_dir / "00000002.npz", "wb") as handle:  # a valid npz, but not the one recorded
        np.savez(handle, values=np.zeros(50))
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.checkpoint"):
        done = store.completed_tasks()
    assert sorted(done) == ["00000000", "00000003", "00000004"]
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "task 00000001" in warned and "task 00000002" in warned


def test_torn_ledger_line_is_ignored_with_a_warning(tmp_path, caplog):
    run_tasks(tmp_path, 0, [0, 1])
    run_tasks(tmp_path, 1, [2, 3])
    ledger = tmp_path / "stage" / "rank00001.jsonl"
    text = ledger.read_text()
    ledger.write_text(text[:len(text) - 40])  # an append killed in the middle of task 3's line
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.checkpoint"):
        done = CheckpointStore(tmp_path, "stage", 0).completed_tasks()
    assert sorted(done) == ["00000000", "00000001", "00000002"]
    assert any("rank00001.jsonl" in r.getMessage() and "corrupt checkpoint ledger (line 2" in r.getMessage()
               for r in caplog.records)


def test_ledger_line_of_another_format_or_garbage_is_ignored(tmp_path, caplog):
    run_tasks(tmp_path, 0, [0, 1])
    ledger = tmp_path / "stage" / "rank00000.jsonl"
    first, second = ledger.read_text().splitlines()
    ledger.write_text(json.dumps({**json.loads(first), "format": 99}) + "\n" + "\x00garbage\n" + second + "\n")
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.checkpoint"):
        assert sorted(CheckpointStore(tmp_path, "stage", 0).completed_tasks()) == ["00000001"]
    assert caplog.text.count("corrupt checkpoint ledger") == 2


def test_no_checkpoints_means_nothing_done(tmp_path):
    assert CheckpointStore(tmp_path, "stage", 0).completed_tasks() == {}


def test_restart_on_other_rank_counts_never_loses_entries(tmp_path):
    # run 1 on two ranks, interrupted
    run_tasks(tmp_path, 0, [0, 1])
    run_tasks(tmp_path, 1, [5, 6])
    # run 2 on one rank: rank 0 consolidates, then writes a fresh rank file
    planner = CheckpointStore(tmp_path, "stage", 0)
    planner.consolidate(planner.completed_tasks())
    assert not list((tmp_path / "stage").glob("rank*"))
    assert len(json.loads((tmp_path / "stage" / "merged.json").read_text())["tasks"]) == 4
    run_tasks(tmp_path, 0, [2])
    assert set(read_rank_ledger(tmp_path / "stage" / "rank00000.jsonl")[0]) == {"00000002"}
    assert sorted(planner.completed_tasks()) == [task_key(i) for i in (0, 1, 2, 5, 6)]
    # run 3 on three ranks
    planner.consolidate(planner.completed_tasks())
    for rank, task_id in enumerate([3, 4, 7]):
        run_tasks(tmp_path, rank, [task_id])
    done = planner.completed_tasks()
    assert sorted(done) == [task_key(i) for i in range(8)]
    for task_id in range(8):
        np.testing.assert_array_equal(planner.load_task(task_id)["values"], result_of(task_id)["values"])


def test_consolidate_drops_unverified_entries(tmp_path):
    run_tasks(tmp_path, 0, [0, 1])
    (tmp_path / "stage" / "tasks" / "00000000.npz").unlink()
    store = CheckpointStore(tmp_path, "stage", 0)
    store.consolidate(store.completed_tasks())
    assert set(json.loads((tmp_path / "stage" / "merged.json").read_text())["tasks"]) == {"00000001"}


# -- manifest ----------------------------------------------------------------------------------

def test_manifest_written_then_matching_resume_accepted(tmp_path):
    store = CheckpointStore(tmp_path, "stage", 0)
    store.check_manifest("hash-a", {"ntasks": 4}, "resume")
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest == {"science_hash": "hash-a", "version": __version__, "input": {"ntasks": 4}}
    run_tasks(tmp_path, 0, [0])
    store.check_manifest("hash-a", {"ntasks": 4}, "resume")
    assert "00000000" in store.completed_tasks()


@pytest.mark.parametrize("science_hash, identity", [("hash-b", {"ntasks": 4}), ("hash-a", {"ntasks": 5})])
def test_manifest_refuses_other_science_config_or_input(tmp_path, science_hash, identity):
    store = CheckpointStore(tmp_path, "stage", 0)
    store.check_manifest("hash-a", {"ntasks": 4}, "resume")
    with pytest.raises(ConfigError, match="different science config or input.*--restart") as caught:
        store.check_manifest(science_hash, identity, "resume")
    assert exit_code_for(caught.value) == 2


def test_refuse_policy_refuses_existing_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, "stage", 0)
    store.check_manifest("hash-a", {}, "refuse")  # nothing there yet: fine
    with pytest.raises(ConfigError, match="pipeline.resume: checkpoints exist"):
        store.check_manifest("hash-a", {}, "refuse")


def test_restart_policy_wipes_old_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, "stage", 0)
    store.check_manifest("hash-a", {}, "resume")
    run_tasks(tmp_path, 0, [0, 1])
    store.check_manifest("hash-b", {}, "restart")
    assert store.completed_tasks() == {}
    assert not list((tmp_path / "stage").rglob("*.npz"))
    assert json.loads(store.manifest_path.read_text())["science_hash"] == "hash-b"


def test_unreadable_manifest_starts_afresh(tmp_path, caplog):
    store = CheckpointStore(tmp_path, "stage", 0)
    store.check_manifest("hash-a", {}, "resume")
    run_tasks(tmp_path, 0, [0])
    store.manifest_path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.checkpoint"):
        store.check_manifest("hash-a", {}, "resume")
    assert "unreadable checkpoint manifest" in caplog.text
    assert store.completed_tasks() == {}
    assert json.loads(store.manifest_path.read_text())["science_hash"] == "hash-a"


# -- atomic writes and disk space ----------------------------------------------------------------

def test_atomic_output_leaves_nothing_when_the_block_raises(tmp_path):
    final = tmp_path / "sub" / "map.fits"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as temporary:
            temporary.write_bytes(b"half a map")
            raise RuntimeError("interrupted")
    assert not final.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_output_keeps_the_old_file_when_the_block_raises(tmp_path):
    final = tmp_path / "map.fits"
    final.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(final) as temporary:
            temporary.write_bytes(b"new but partial")
            raise KeyboardInterrupt
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["map.fits"]


def test_atomic_output_success_replaces_and_cleans_up(tmp_path):
    final = tmp_path / "map.fits"
    final.write_bytes(b"old")
    (tmp_path / "map.fits.inprogress").write_bytes(b"stale temporary of a killed run")
    with atomic_output(final) as temporary:
        assert temporary.name == "map.fits.inprogress"
        temporary.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["map.fits"]


def test_write_json_atomic_round_trip(tmp_path):
    payload = {"b": [1, 2], "a": {"x": 1.5}}
    write_json_atomic(tmp_path / "d" / "f.json", payload)
    assert json.loads((tmp_path / "d" / "f.json").read_text()) == payload


def test_ensure_free_disk_names_the_directory(tmp_path):
    target = tmp_path / "not" / "yet" / "created"
    ensure_free_disk(target, 0, "the kappa maps")
    with pytest.raises(ResourceError) as caught:
        ensure_free_disk(target, 2 ** 62, "the kappa maps")
    message = str(caught.value)
    assert str(target) in message and "the kappa maps" in message and "MiB" in message
    assert exit_code_for(caught.value) == 3
