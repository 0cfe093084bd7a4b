"""The config's rules for ``pipelines.dicom.scan``: which series are selected, what one file may cost."""

from __future__ import annotations

from .config import PipelineConfig
from .dicom.limits import Limits
from .dicom.scan import SelectionRules


def selection_rules(config: PipelineConfig) -> SelectionRules:
    sel = config.data.selection
    return SelectionRules(
        modalities=tuple(sel.modalities),
        series_description_include=tuple(sel.series_description_include),
        series_description_exclude=tuple(sel.series_description_exclude),
        image_type_exclude=tuple(sel.image_type_exclude),
        min_slices=sel.min_slices,
        allow_color=sel.allow_color,
    )


def scan_limits(config: PipelineConfig) -> Limits:
    """The per-file resource bounds of ``data.limits``."""
    return Limits(**config.data.limits.model_dump())
