"""``plan`` and ``status``: counts from disk and memory estimates that follow the documented formulas."""
import yaml

from conftest import run_cli, write_gaussian_kappa
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.processing.checkpoint import CheckpointStore, TaskRecord
from lensing_ssc.processing.planning import (analysis_memory_mb, checkpointed_tasks, kappa_memory_mb, plan,
                                             preprocess_memory_mb)


def test_memory_estimates_scale_with_nside_as_documented():
    # HEALPIX rows (sorted runs merged block by block): the reached bits (1 bit per pixel), one block of
    # 2^18 pixels at ~32 B each, and a chunk of rows in each of two runs (40 B per row and run, with the
    # chunk read ahead)
    assert preprocess_memory_mb(8192, 0) == (12 * 8192 ** 2 / 8 + 32 * 2 ** 18) / 2 ** 20
    assert preprocess_memory_mb(1, 0) == 12 * (1 / 8 + 32) / 2 ** 20
    assert preprocess_memory_mb(8192, 10 ** 7) == preprocess_memory_mb(8192, 0) + 10 ** 7 * 80 / 2 ** 20
    # particles (no pixel order): float64 accumulator + its reached bits + a bincount of at most 2^22
    # pixels, plus the row chunk; the float32 sheet is streamed to its file block by block
    assert preprocess_memory_mb(8192, 0, "particles") == (12 * 8192 ** 2 * (8 + 1 / 8) + 8 * 2 ** 22) / 2 ** 20
    assert preprocess_memory_mb(8192, 10 ** 7, "particles") > (preprocess_memory_mb(8192, 0, "particles")
                                                               + 10 ** 7 * 50 / 2 ** 20)
    assert analysis_memory_mb(4096, 2048) == (12 * 4096 ** 2 * 13 + 30 * 2048 ** 2 * 8) / 2 ** 20
    # kappa per rank is one task (each rank writes its ranges into the maps: no full-sky map anywhere):
    # float64 sums and a float32 written range of every source (12 B per pixel and source), the footprint
    # (5 B), and of every sheet 3 float32 pieces of 2^15 pixels (read ahead) and a float64 block of 2^11 ...
    sheet_bytes = 3 * 4 * 2 ** 15 + 8 * 2 ** 11
    assert kappa_memory_mb(1024, 5, 10 ** 4) == 2 ** 20 * (12 * 5 + 5) / 2 ** 20 + 10 ** 4 * sheet_bytes / 2 ** 20
    # ... and its pixels stop growing with nside at 2^20
    assert kappa_memory_mb(8192, 5, 100) == kappa_memory_mb(1024, 5, 100) == (
        2 ** 20 * (12 * 5 + 5) + 100 * sheet_bytes) / 2 ** 20


def test_plan_counts_existing_outputs_and_reads_nside_from_maps(tmp_path):
    write_gaussian_kappa(tmp_path / "kappa", nside=32, zs=1.0)
    config = ProcessingConfig(output_dir=str(tmp_path), kappa={"source_redshifts": [1.0, 2.0]})
    stages = {p.stage: p for p in plan(config)}
    assert (stages["kappa"].tasks, stages["kappa"].done) == (2, 1)
    assert stages["analyze"].done == 0
    assert stages["analyze"].memory_mb == analysis_memory_mb(32, 2048)
    assert "265 patches" in stages["analyze"].notes[0]


def test_plan_of_a_mock_run_predicts_sheets_without_writing(tmp_path):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "usmesh"), "output_dir": str(tmp_path / "out"),
                                           "mock": {"enabled": True, "nside": 64, "z_max": 1.0},
                                           "preprocessing": {"sheet_range": [0, 100]}}))
    done = run_cli(["plan", config_path])
    assert done.returncode == 0, done.stderr
    assert "mock to be generated at nside 64" in done.stdout
    assert "0/50" in done.stdout  # slices with a > 1/(1 + z_max) = 0.5: 50..99
    assert not (tmp_path / "out").exists() and not (tmp_path / "usmesh").exists()


def test_status_counts_tasks_in_merged_and_appended_ledgers(tmp_path):
    config = ProcessingConfig(output_dir=str(tmp_path))
    earlier = CheckpointStore(config.checkpoint_root, "kappa", rank=0)
    for task_id in (0, 1):
        earlier.save_record(task_id, TaskRecord({"crc32": task_id}), interval=1)
    earlier.consolidate(earlier.completed_tasks(lambda key, record: True))  # a resumed run: merged.json
    for rank, task_ids in ((0, [2]), (1, [3, 1])):  # task 1 again: counted once
        store = CheckpointStore(config.checkpoint_root, "kappa", rank=rank)
        for task_id in task_ids:
            store.save_record(task_id, TaskRecord({"crc32": task_id}), interval=1)
    ledger = config.checkpoint_root / "kappa" / "rank00001.jsonl"
    ledger.write_text(ledger.read_text() + '{"format": 1, "task": "000000')  # a torn last line
    assert checkpointed_tasks(config, "kappa") == 4
    assert checkpointed_tasks(config, "analyze") == 0
