"""The pipeline's parameters: every value a user may change per execution without editing code.

The set is fixed here and is the same for every build; build-time options (the tuning strategy) only narrow
what a parameter accepts. The README lists them, and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

ARCHITECTURES = ["compact", "keras", "dense", "resnet18"]
# the tuner searches the CNNs; dense (a baseline) and resnet18 (transfer learning) are chosen by name
TUNED_ARCHITECTURES = ["compact", "keras"]
NO_WEIGHTS_PREFIX = "pretrained/none"  # PretrainedWeightsUrl's default: a prefix holding only a README.txt note
DATA_FORMATS = ["auto", "idx", "cifar10", "image-folder"]
RUNTIME_STRATEGIES = ["Bayesian", "Random"]  # strategies that share one tuning-job shape


@dataclass
class Parameters:
    input_data: ParameterString
    data_format: ParameterString
    image_size: ParameterInteger
    processing_instance_type: ParameterString
    processing_instance_count: ParameterInteger
    training_instance_type: ParameterString
    training_instance_count: ParameterInteger
    max_train_samples: ParameterInteger
    max_test_samples: ParameterInteger
    cnn_epochs: ParameterInteger
    xgboost_num_round: ParameterInteger
    tuning_max_jobs: ParameterInteger
    tuning_max_parallel_jobs: ParameterInteger
    accuracy_threshold: ParameterFloat
    model_approval_status: ParameterString
    cnn_architecture: ParameterString
    pretrained_weights: ParameterString
    tuning_strategy: ParameterString
    tuning_early_stopping: ParameterString
    tuning_random_seed: ParameterInteger

    def as_list(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def make_parameters(default_bucket: str, tuning_strategy: str, input_prefix: str = "data/mnist") -> Parameters:
    """Defaults suit a local full-MNIST run on 2 CPU cores; SageMaker runs override them with --param.

    Bayesian and Random search the same ranges, so with either the choice stays a per-execution parameter.
    Grid and Hyperband change the tuning job's shape, so a definition built for one of them accepts only that
    strategy, and no early-stopping type (Hyperband stops trials itself; Grid has nothing to stop early).
    """
    runtime_choice = tuning_strategy in RUNTIME_STRATEGIES
    return Parameters(
        input_data=ParameterString("InputDataUrl", default_value=f"s3://{default_bucket}/{input_prefix}/"),
        data_format=ParameterString("DataFormat", default_value="auto", enum_values=DATA_FORMATS),
        image_size=ParameterInteger("ImageSize", default_value=0),
        processing_instance_type=ParameterString("ProcessingInstanceType", default_value="ml.m5.large"),
        processing_instance_count=ParameterInteger("ProcessingInstanceCount", default_value=1),
        training_instance_type=ParameterString("TrainingInstanceType", default_value="ml.m5.xlarge"),
        training_instance_count=ParameterInteger("TrainingInstanceCount", default_value=1),
        max_train_samples=ParameterInteger("MaxTrainSamples", default_value=0),
        max_test_samples=ParameterInteger("MaxTestSamples", default_value=0),
        cnn_epochs=ParameterInteger("CnnEpochs", default_value=15),
        xgboost_num_round=ParameterInteger("XGBoostNumRound", default_value=300),
        tuning_max_jobs=ParameterInteger("TuningMaxJobs", default_value=4),
        tuning_max_parallel_jobs=ParameterInteger("TuningMaxParallelJobs", default_value=2),
        accuracy_threshold=ParameterFloat("AccuracyThreshold", default_value=0.99),
        model_approval_status=ParameterString("ModelApprovalStatus", default_value="PendingManualApproval",
                                              enum_values=["PendingManualApproval", "Approved", "Rejected"]),
        cnn_architecture=ParameterString("CnnArchitecture", default_value="compact", enum_values=ARCHITECTURES),
        # TrainCNN's weights channel (resnet18 fine-tunes from the *.pth/*.pt there; nothing there: from scratch).
        pretrained_weights=ParameterString("PretrainedWeightsUrl",
                                           default_value=f"s3://{default_bucket}/{NO_WEIGHTS_PREFIX}/"),
        tuning_strategy=ParameterString("TuningStrategy", default_value=tuning_strategy,
                                        enum_values=RUNTIME_STRATEGIES if runtime_choice else [tuning_strategy]),
        tuning_early_stopping=ParameterString("TuningEarlyStoppingType", default_value="Auto" if runtime_choice
                                              else "Off", enum_values=["Auto", "Off"] if runtime_choice else ["Off"]),
        # The same seed and the same parameters search the same trials: two executions can be compared.
        tuning_random_seed=ParameterInteger("TuningRandomSeed", default_value=42),
    )
