"""PreprocessingPipeline: FastPM usmesh light cone (``data_dir``) -> ``{output_dir}/mass_sheets/delta-sheet-NN.fits``.

The seed's five steps (SCIENCE.md §2, DESIGN.md §1): data discovery and validation, coordinate
transformation, mass sheet generation (one checkpointed task per sheet, balanced over the MPI ranks by
rows), quality control (``mass_sheets/qc.json``) and output writing (``mass_sheets/manifest.json``). See
:mod:`lensing_ssc.processing.steps.preprocessing_steps` for the memory model and the restart rules.
"""
from __future__ import annotations

from typing import List

import healpy as hp

from lensing_ssc.core.errors import ConfigError
from lensing_ssc.processing.pipeline.base_pipeline import BasePipeline
from lensing_ssc.processing.steps.preprocessing_steps import (
    CoordinateTransformationStep,
    DataDiscoveryStep,
    ManifestWritingStep,
    MassSheetGenerationStep,
    QualityControlStep,
)


class PreprocessingPipeline(BasePipeline):
    """The ``lensing-ssc preprocess`` stage.

    Config keys: ``data_dir`` (usmesh directory), ``output_dir``, ``seed`` (default from the usmesh),
    ``preprocessing.{sheet_range, chunk_size, validation_level, dataset, nside_out, observer, overwrite}``,
    ``cosmology.{H0, Om0}``. Bad inputs raise InputError (exit code 2) before any sheet is written.
    """

    def _validate_config(self) -> None:
        super()._validate_config()
        problems = []
        if not self.config.data_dir:
            problems.append("data_dir: expected the FastPM usmesh directory to preprocess, got nothing")
        nside_out = self.config.preprocessing.nside_out
        if nside_out is not None and not hp.isnsideok(nside_out, nest=True):
            problems.append(f"preprocessing.nside_out: expected a power of two (NEST pixel ids need one), "
                            f"got {nside_out}")
        if problems:
            raise ConfigError(problems, self.config.source)

    def _create_steps(self) -> List:
        return [DataDiscoveryStep(self.config), CoordinateTransformationStep(self.config),
                MassSheetGenerationStep(self.config), QualityControlStep(self.config),
                ManifestWritingStep(self.config)]
