"""KappaPipeline: ``{output_dir}/mass_sheets/delta-sheet-NN.fits`` -> ``{output_dir}/kappa/kappa_zs{zs}_s{seed}.fits``.

Born-approximation convergence (SCIENCE.md §3.1) for every ``kappa.source_redshifts`` in one pass over
the sheets, decomposed by NESTED pixel range over the MPI ranks, checkpointed per range, resumable on
any rank count, and optionally validated against a Limber prediction (see
:mod:`lensing_ssc.processing.steps.kappa_steps` for the steps and the decomposition).
"""
from __future__ import annotations

from typing import List, Optional

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import ConfigError
from lensing_ssc.processing.pipeline.base_pipeline import BasePipeline
from lensing_ssc.processing.steps.kappa_steps import (
    BornSumStep,
    KappaInputsStep,
    KappaValidationStep,
    WriteKappaMapsStep,
)


class KappaPipeline(BasePipeline):
    """The ``lensing-ssc kappa`` stage.

    ``validate_cl``: run the C_ell check (``kappa/validation.json``) — None (default) when the sheets'
    headers say MOCK = True, True always, False never.
    """

    def __init__(self, config: ProcessingConfig, validate_cl: Optional[bool] = None):
        super().__init__(config)
        self.validate_cl = validate_cl

    def _validate_config(self) -> None:
        super()._validate_config()
        redshifts = [float(zs) for zs in self.config.kappa.source_redshifts]
        if len(set(redshifts)) != len(redshifts):
            raise ConfigError([f"kappa.source_redshifts: expected distinct redshifts, got {redshifts}"],
                              self.config.source)

    def _create_steps(self) -> List:
        return [KappaInputsStep(self.config, self.comm), BornSumStep(self.config),
                WriteKappaMapsStep(self.config), KappaValidationStep(self.config, self.comm, self.validate_cl)]
