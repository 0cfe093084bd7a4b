"""Pipeline stages: each module has one entry function that takes a validated ``PipelineConfig``."""
