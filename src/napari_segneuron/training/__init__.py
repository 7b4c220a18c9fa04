"""Training: targets, augmentation, supervised finetuning and self-supervised pretraining (Qt-free)."""
from .augment import AugmentConfig, amplitude_mix, cutmix
from .data import CropSampler, TrainingInputError, TrainVolume, normalize_image
from .loop import TrainingCancelled
from .finetune import TrainResult, finetune, predict_volume, validate
from .pretrain import PretrainNet, pretrain, transfer_encoder
from .targets import affinities_from_labels, labels_from_membranes, targets_from_labels

__all__ = [
    "AugmentConfig", "amplitude_mix", "cutmix", "CropSampler", "TrainingInputError", "TrainVolume",
    "normalize_image", "TrainingCancelled", "TrainResult", "finetune", "predict_volume", "validate",
    "PretrainNet", "pretrain", "transfer_encoder", "affinities_from_labels", "labels_from_membranes",
    "targets_from_labels",
]
