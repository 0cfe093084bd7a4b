"""DICOM layer: discovery and grouping (scan), pixels and volumes (read), synthetic cohorts (synth)."""
