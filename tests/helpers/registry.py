"""A model package registration request and its evaluation.json, as the pipeline's Register step makes them."""

from __future__ import annotations

from mlops.registry import PENDING

GROUP = "MnistClassifier"
EVAL_URI = "s3://mlops-bucket/executions/abc/evaluation/evaluation.json"
EVALUATION = {
    "multiclass_classification_metrics": {"accuracy": {"value": 0.9941, "standard_deviation": "NaN"}},
    "baseline": {"multiclass_classification_metrics": {"accuracy": {"value": 0.9712, "standard_deviation": "NaN"}}},
}


def make_request(status: str = PENDING, group: str = GROUP) -> dict:
    return {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": "CNN compact, tuned",
        "ModelApprovalStatus": status,
        "InferenceSpecification": {
            "Containers": [{"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311",
                            "ModelDataUrl": "s3://mlops-bucket/executions/abc/train/model.tar.gz"}],
            "SupportedContentTypes": ["image/png", "application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": EVAL_URI}}},
    }
