"""The model registry (MLflow): registering versions behind the challenger gate, and promoting them
through stages by a fair comparison (challenger = staging, champion = production, previous-champion)."""
