"""A toy pipeline of numbered tasks on the real framework, for checkpoint/restart and abort tests.

    python tests/helpers/toy_pipeline.py CONFIG.yaml NTASKS SLEEP_S [FAIL_RANK]

Each task i produces ``sin(arange(1000) * (i + 1))`` after sleeping SLEEP_S; the final step
stacks all task results on rank 0 into ``{output_dir}/toy.npy`` (written atomically). With
FAIL_RANK, that rank raises in its second task. Exit codes follow the CLI's.
"""
import sys
import time
from pathlib import Path

import numpy as np

from lensing_ssc.cli import setup_logging
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import EXIT_CHECKPOINTED, LensingSSCError, exit_code_for
from lensing_ssc.io.atomic import atomic_output
from lensing_ssc.parallel import abort_on_exception, get_comm
from lensing_ssc.processing.pipeline import BasePipeline
from lensing_ssc.processing.runner import StageRunner, Task
from lensing_ssc.processing.steps import BaseStep


def toy_result(task_id):
    return np.sin(np.arange(1000) * (task_id + 1))


class NumberedTasksStep(BaseStep):
    retryable = False

    def __init__(self, config, ntasks, sleep_s, fail_rank):
        super().__init__(config)
        self.ntasks, self.sleep_s, self.fail_rank = ntasks, sleep_s, fail_rank

    def execute(self, data):
        runner = StageRunner(self.config, "toy")
        comm = runner.comm
        calls = []

        def process(task):
            calls.append(task.task_id)
            if comm.rank == self.fail_rank and len(calls) == 2:
                raise RuntimeError(f"injected failure on rank {comm.rank}")
            time.sleep(self.sleep_s)
            return {"values": toy_result(task.task_id)}

        tasks = [Task(i) for i in range(self.ntasks)]
        self.reports.append(runner.run(tasks, process, {"ntasks": self.ntasks}))
        return {"runner": runner, "tasks": tasks}


class GatherStep(BaseStep):
    retryable = False

    def execute(self, data):
        runner = data["runner"]
        final = Path(self.config.output_dir) / "toy.npy"
        if runner.comm.is_root:
            stacked = np.stack([runner.load(task)["values"] for task in data["tasks"]])
            with atomic_output(final) as temporary:
                with open(temporary, "wb") as handle:
                    np.save(handle, stacked)
        runner.comm.barrier()
        self.outputs.append(str(final))
        return data


class ToyPipeline(BasePipeline):
    def __init__(self, config, ntasks, sleep_s, fail_rank):
        super().__init__(config)
        self.args = (ntasks, sleep_s, fail_rank)

    def _create_steps(self):
        return [NumberedTasksStep(self.config, *self.args), GatherStep(self.config)]


def main():
    config_path, ntasks, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    fail_rank = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    comm = get_comm()
    setup_logging("INFO", comm.rank)
    try:
        with abort_on_exception(comm, exit_code_for):
            config = ProcessingConfig.from_yaml(config_path)
            result = ToyPipeline(config, ntasks, sleep_s, fail_rank).execute()
            if result.status == "checkpointed":
                print(f"toy: {result.message}", file=sys.stderr)
                return EXIT_CHECKPOINTED
            return 0
    except LensingSSCError as exc:
        print(f"toy: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
