"""Pretrained image classifiers: any Hugging Face folder or hub id, plus packaged offline aliases.

Importing this package registers tunesmith's MBConv family (MobileNetV2, EfficientNet-Lite) with the
transformers Auto classes, so a saved run of one of them loads like any other image classifier.
"""

from .mbconv import MBConvConfig, MBConvForImageClassification

__all__ = ["MBConvConfig", "MBConvForImageClassification"]
