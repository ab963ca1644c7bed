"""The image QC network shipped with the package (model.pt, config.json, metrics.json):
trained by `boneage train-qc` on the RSNA training split; see boneage/qc.py, docs/qc.md."""
