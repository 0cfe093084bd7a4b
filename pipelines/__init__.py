"""medvit pipelines: DICOM and MONAI data, the pipeline stages, MLflow tracking and the `medvit` CLI."""
