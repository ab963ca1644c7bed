"""The MLflow pyfunc "model from code" for the end-to-end boneage predictor.

`boneage register` logs this file as the model's code with the bundle directory (three
localizers, aggregator, carpal head, params) as the artifact `bundle`. Loading it needs
the `boneage` package installed (it is the preprocessing and the networks).

Input: a DataFrame with `path` (image file: PNG/JPEG/DICOM), optional `id`, `sex`
(M/F; missing → unknown) and `chronological_age_months`. Output: one row per input with
the columns of boneage.score.PREDICTION_COLUMNS.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd


class BoneAgePredictor(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from boneage.bundle import OpenedModel, load_bundle

        self.bundle_dir = Path(context.artifacts["bundle"])
        bundle = load_bundle(self.bundle_dir)
        self.opened = OpenedModel(bundle, str(bundle.meta.get("name", "boneage")),
                                  "pyfunc", str(self.bundle_dir))  # fmt: skip

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from boneage.score import score_frame

        return score_frame(self.opened, pd.DataFrame(model_input))


mlflow.models.set_model(BoneAgePredictor())
