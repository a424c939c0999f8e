# lensing_ssc: `make demo` and `make test` are the two commands of the README.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
NP ?= 2
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
# OpenMPI on small machines: allow more ranks than cores (tests use up to 3 ranks on 2 cores).
export OMPI_MCA_rmaps_base_oversubscribe := 1
MPIEXEC := mpiexec -n $(NP)

.PHONY: bootstrap test test-serial test-mpi test-slurm demo bench clean

bootstrap:
	@scripts/bootstrap.sh

test: bootstrap test-serial test-mpi test-slurm

test-serial:
	$(PY) -m pytest -q

# pytest exits with code 5 when it collects nothing, so an MPI run without MPI tests fails here.
test-mpi:
	$(MPIEXEC) $(PY) -m pytest -q --with-mpi -m mpi -p no:cacheprovider

# The jobs/ Slurm scripts on a real one-node Slurm, started here by scripts/local_slurm.sh (and stopped
# again if it was not running before). Skipped, with the reason, where Slurm cannot run (exit 77: no root
# or sudo, no apt-get); any other failure to start fails.
test-slurm: bootstrap
	@was_up=1; scripts/local_slurm.sh status 2>/dev/null || was_up=0; \
	scripts/local_slurm.sh start; started=$$?; \
	if [ $$started -eq 77 ]; then echo "test-slurm: SKIPPED: no local Slurm (reason above)"; exit 0; fi; \
	[ $$started -eq 0 ] || exit $$started; \
	LSSC_SLURM_TESTS=1 $(PY) -m pytest -q -m slurm -p no:cacheprovider tests/cluster; passed=$$?; \
	[ $$was_up -eq 1 ] || scripts/local_slurm.sh stop; \
	exit $$passed

demo: bootstrap
	$(MPIEXEC) $(VENV)/bin/lensing-ssc run configs/demo.yaml

bench: bootstrap
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf demo_output .pytest_cache
