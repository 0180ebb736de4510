"""The pipeline's stages, one module each, started by dvc.yaml (`python -m lvm.stages.<name>`); no
module imports a stage (tests/test_imports.py)."""
