"""The config's rules for ``pipelines.dicom.scan``: which series are selected, what one file may cost."""

from __future__ import annotations

from pipelines.config import PipelineConfig
from pipelines.dicom.limits import Limits
from pipelines.dicom.scan import SelectionRules


def selection_rules(config: PipelineConfig) -> SelectionRules:
    """``data.selection``, the run's one kind (``data.kind``: other kinds are ``unsupported_modality``) and the
    colour mode the reader will use (``preprocess.xray.color``)."""
    sel = config.data.selection
    return SelectionRules(
        modalities=tuple(sel.modalities),
        kinds=(config.data.kind,),
        series_description_include=tuple(sel.series_description_include),
        series_description_exclude=tuple(sel.series_description_exclude),
        image_type_exclude=tuple(sel.image_type_exclude),
        min_slices=sel.min_slices,
        color=config.preprocess.xray.color,
    )


def scan_limits(config: PipelineConfig) -> Limits:
    """The per-file resource bounds of ``data.limits``."""
    return Limits(**config.data.limits.model_dump())
